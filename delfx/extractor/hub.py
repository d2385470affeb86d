"""The official DELF module (TensorFlow Hub) and anything with its signature.

One loading path serves the official module (`https://tfhub.dev/google/delf/1`), a local copy
(SavedModel folder), a handle already in `TFHUB_CACHE_DIR`, and the models `delfx export-model`
writes. The contract, as published:

    sig = tensorflow_hub.load(handle).signatures["default"]
    out = sig(image=float32 [H, W, 3] in [0, 1], score_threshold=100.0,
              image_scales=[0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0], max_feature_num=1000)
    out["locations"]  (N, 2) (y, x);  out["descriptors"]  (N, 40)
    optional: out["scales"] (N,), out["attention"] (N,)
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from delfx.config import ExtractConfig
from delfx.digests import folder_sha256
from delfx.errors import DelfxError
from delfx.extractor.base import FeatureModel

log = logging.getLogger(__name__)

DEFAULT_HANDLE = "https://tfhub.dev/google/delf/1"


def is_remote(handle: str) -> bool:
    return handle.startswith(("http://", "https://", "gs://"))


def hub_cache_dir() -> Path:
    """Where tensorflow_hub caches modules (same rule as tensorflow_hub.resolver)."""
    return Path(os.environ.get("TFHUB_CACHE_DIR") or Path(tempfile.gettempdir()) / "tfhub_modules")


def cached_module_dir(handle: str) -> Path | None:
    """The cache folder of a remote handle if it is already there (loadable offline), else None."""
    path = hub_cache_dir() / hashlib.sha1(handle.encode("utf8")).hexdigest()
    return path if path.is_dir() and any(path.iterdir()) else None


def available_offline(handle: str) -> bool:
    """True when loading `handle` needs no network: a local SavedModel or a cached module."""
    if is_remote(handle):
        return cached_module_dir(handle) is not None
    return (Path(handle) / "saved_model.pb").is_file()


def _ways_out(handle: str) -> str:
    return (f"ways out: a local copy (--model-path DIR with saved_model.pb), a pre-seeded cache "
            f"({hub_cache_dir()}/{hashlib.sha1(handle.encode()).hexdigest()}, set TFHUB_CACHE_DIR), "
            f"or a built-in model (--model rootsift or delf-vgg16)")


def load_signature(handle: str = DEFAULT_HANDLE):
    """`tensorflow_hub.load(handle).signatures["default"]`, with one-line errors.

    Returns:
        (signature, folder it was loaded from or None when unknown)
    """
    from delfx.tf_quiet import import_tensorflow
    import_tensorflow()
    import warnings
    with warnings.catch_warnings():  # tensorflow-hub 0.16 imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        import tensorflow_hub as hub
    if not is_remote(handle) and not (Path(handle) / "saved_model.pb").is_file():
        raise DelfxError(f"{handle}: not a SavedModel folder (no saved_model.pb)")
    try:
        loaded = hub.load(handle)
    except Exception as exc:  # network, resolver and SavedModel errors come in many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if is_remote(handle) and not available_offline(handle):
            raise DelfxError(f"cannot load the DELF module {handle} (offline? {reason}); "
                             f"{_ways_out(handle)}") from None
        raise DelfxError(f"cannot load the DELF module {handle}: {reason}") from None
    if "default" not in getattr(loaded, "signatures", {}):
        raise DelfxError(f"{handle}: has no 'default' signature (not a DELF-style module)")
    folder = cached_module_dir(handle) if is_remote(handle) else Path(handle)
    # Keep the loaded object alive as long as the signature: it owns the variables.
    signature = loaded.signatures["default"]
    signature._delfx_owner = loaded  # noqa: SLF001
    return signature, folder


class HubModel(FeatureModel):
    """Any model with the official DELF signature, called one image at a time."""

    name = "tfhub"

    def __init__(self, config: ExtractConfig, handle: str | None = None):
        super().__init__(config)
        from delfx.tf_quiet import import_tensorflow
        self._tf = import_tensorflow()
        self.handle = handle or config.model_path or DEFAULT_HANDLE
        self.signature, self.folder = load_signature(self.handle)
        self._digest = folder_sha256(self.folder) if self.folder is not None else ""
        probe = self._call(np.zeros((64, 64, 3), np.uint8))
        self.descriptor_dim = int(probe["descriptors"].shape[1])
        if config.descriptor_dim and config.descriptor_dim != self.descriptor_dim:
            raise DelfxError(f"{self.handle} outputs {self.descriptor_dim}-d descriptors, the "
                             f"config asks for {config.descriptor_dim} (set descriptor_dim 0 or "
                             f"{self.descriptor_dim})")

    @property
    def model_id(self) -> str:
        return f"tfhub:{self.handle}" if is_remote(self.handle) else f"savedmodel:{Path(self.handle).name}"

    def weights_digest(self) -> str:
        return self._digest

    def output_config(self) -> dict[str, Any]:
        data = self.config.to_dict()
        for key in ("batch_size", "precision", "model_path"):
            data.pop(key)
        return data

    def _call(self, image: np.ndarray) -> dict[str, np.ndarray]:
        tf = self._tf
        out = self.signature(
            image=tf.convert_to_tensor(image, tf.float32) / 255.0,
            score_threshold=tf.constant(self.config.score_threshold, tf.float32),
            image_scales=tf.constant(self.config.scales, tf.float32),
            max_feature_num=tf.constant(self.config.max_features, tf.int32))
        return {key: value.numpy() for key, value in out.items()}

    def _extract(self, image: np.ndarray):
        out = self._call(image)
        locations = out["locations"].astype(np.float32)
        n = len(locations)
        scores = out.get("attention")
        if scores is None:  # a module without scores: keep its order (rank as score)
            scores = np.arange(n, 0, -1, dtype=np.float32)
        scales = out.get("scales", np.ones(n, np.float32))
        return locations, out["descriptors"], np.reshape(scales, -1), np.reshape(scores, -1)
