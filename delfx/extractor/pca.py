"""PCA post-processing of local descriptors, shared by every feature model (DELF's recipe).

DELF post-processes each descriptor as: L2-normalise -> subtract the PCA mean -> project on the
leading principal axes -> optionally whiten (divide by sqrt(eigenvalue)) -> L2-normalise again.
This module fits such a projection with plain numpy (no TensorFlow) and stores it as a small
HDF5 file (never a pickle: a projection file may come from someone else).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from delfx.artifacts import check_header, header
from delfx.errors import DelfxError

logger = logging.getLogger(__name__)

FORMAT_NAME = "delfx-pca"
FORMAT_VERSION = 1
# Added to the eigenvalues before whitening so that a (near-)zero-variance axis, e.g. from
# degenerate training data, cannot blow a component up to inf; far below real eigenvalues of
# unit-norm descriptors (~1e-4 .. 1e-1).
WHITEN_EPS = 1e-8
# Same floor as tf.nn.l2_normalize (on the squared norm): zero vectors stay zero, not NaN.
_L2_EPS = 1e-12
_FIT_CHUNK = 16_384  # rows per float64 chunk when accumulating the covariance


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.sqrt(np.maximum(np.einsum("ij,ij->i", x, x), _L2_EPS))
    return x / norms[:, None]


@dataclass(frozen=True, eq=False)
class PCAProjection:
    """A fitted PCA, applied the DELF way.

    Attributes:
        mean: (D_in,) float32 mean of the L2-normalised training descriptors.
        components: (D_out, D_in) float32; rows are the principal axes by decreasing variance.
        variances: (D_out,) float32 eigenvalues of those axes.
        whiten: divide each projected coordinate by sqrt(variance) before the final L2 norm.
        source: provenance (what it was fitted on); recorded, but not part of `digest`.

    Arrays are stored read-only. Two projections compare equal when their digests are equal.
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    whiten: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        # Coerce once so that apply/digest never depend on the dtype or layout handed in.
        for name in ("mean", "components", "variances"):
            array = np.array(getattr(self, name), dtype=np.float32, order="C", copy=True)
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        object.__setattr__(self, "whiten", bool(self.whiten))
        object.__setattr__(self, "source", str(self.source))
        if self.mean.ndim != 1 or self.components.ndim != 2:
            raise DelfxError(f"PCA: mean must be 1-d and components 2-d, got shapes "
                             f"{self.mean.shape} and {self.components.shape}")
        if self.components.shape[1] != self.mean.shape[0] or self.components.shape[0] < 1:
            raise DelfxError(f"PCA: components {self.components.shape} do not fit mean "
                             f"{self.mean.shape}")
        if self.variances.shape != (self.components.shape[0],):
            raise DelfxError(f"PCA: variances {self.variances.shape} do not fit components "
                             f"{self.components.shape}")
        if not all(np.isfinite(a).all() for a in (self.mean, self.components, self.variances)):
            raise DelfxError("PCA: mean, components and variances must be finite")

    @property
    def in_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.components.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Post-process descriptors: L2 -> centre -> project -> (whiten) -> L2.

        Args:
            x: (N, D_in) descriptors, any float dtype; N may be 0.

        Returns:
            (N, D_out) float32, rows of unit L2 norm (zero rows stay zero).
        """
        return l2_normalize(self.project(x))

    def project(self, x: np.ndarray) -> np.ndarray:
        """`apply` without the final L2 normalisation, (N, D_in) -> (N, D_out) float32.

        Whitened, the projected training data has about unit variance per axis: useful to
        check a fit, and for code that wants the coordinates before normalisation.
        """
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise DelfxError(f"PCA expects (N, {self.in_dim}) descriptors, got {x.shape}")
        projected = (l2_normalize(x) - self.mean) @ self.components.T
        if self.whiten:
            projected /= np.sqrt(self.variances + np.float32(WHITEN_EPS))
        return projected

    def for_descriptors(self, in_dim: int, dim: int, what: str) -> "PCAProjection":
        """This PCA checked against `what`'s `in_dim`-d descriptors and truncated to `dim`
        (a model's constructor asks this of the PCA it is given)."""
        if self.in_dim != in_dim:
            raise DelfxError(f"{what} needs a PCA fitted on its {in_dim}-d descriptors, got one "
                             f"with input dimension {self.in_dim}")
        if not 1 <= dim <= self.out_dim:
            raise DelfxError(f"descriptor_dim {dim} needs a PCA with at least {dim} components, "
                             f"the given one has {self.out_dim}")
        return self.truncate(dim)

    def truncate(self, dim: int) -> "PCAProjection":
        """The same PCA keeping only the `dim` leading axes (DELF slices its matrix the same way)."""
        if not 1 <= dim <= self.out_dim:
            raise DelfxError(f"cannot truncate a {self.out_dim}-d PCA to {dim} dimensions")
        if dim == self.out_dim:
            return self
        return PCAProjection(self.mean, self.components[:dim], self.variances[:dim],
                             self.whiten, self.source)

    def digest(self) -> str:
        """sha256 (hex) of the learned content: arrays (with shapes) and the whiten flag."""
        h = hashlib.sha256(f"{FORMAT_NAME}/{FORMAT_VERSION}".encode())
        for array in (self.mean, self.components, self.variances):
            # The shape goes in too, so that e.g. (40, 128) and (80, 64) cannot collide.
            h.update(repr(array.shape).encode())
            h.update(array.astype("<f4", copy=False).tobytes())
        h.update(b"whiten=1" if self.whiten else b"whiten=0")
        return h.hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PCAProjection):
            return NotImplemented
        return self.digest() == other.digest()

    def __hash__(self) -> int:
        return hash(self.digest())

    def save(self, path: str | os.PathLike) -> Path:
        """Write an HDF5 file atomically (temporary file + rename); returns the path."""
        import h5py
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with h5py.File(tmp, "w") as f:
                for key, value in header(FORMAT_NAME, FORMAT_VERSION).items():
                    f.attrs[key] = value
                f.attrs["whiten"] = self.whiten
                f.attrs["source"] = self.source
                f.attrs["digest"] = self.digest()
                for name in ("mean", "components", "variances"):
                    f.create_dataset(name, data=getattr(self, name))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PCAProjection":
        """Read a file written by `save`; DelfxError if missing, foreign, newer or damaged."""
        import h5py
        path = Path(path)
        if not path.is_file():
            raise DelfxError(f"PCA file not found: {path}")
        try:
            with h5py.File(path, "r") as f:
                check_header(f.attrs, FORMAT_NAME, {FORMAT_VERSION}, str(path),
                             what=f"{FORMAT_NAME} file", advice="fit it again (delfx fit-pca)")
                pca = cls(f["mean"][()], f["components"][()], f["variances"][()],
                          whiten=bool(f.attrs["whiten"]), source=str(f.attrs.get("source", "")))
                stored = f.attrs.get("digest")
        except DelfxError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise DelfxError(f"cannot read PCA file {path}: {exc}") from None
        if stored is not None and str(stored) != pca.digest():
            raise DelfxError(f"PCA file {path} is damaged: content does not match its digest")
        return pca


def fit_pca(descriptors: np.ndarray, dim: int = 40, *, whiten: bool = False, source: str = "",
            max_samples: int = 200_000, seed: int = 0) -> PCAProjection:
    """Fit a DELF-style PCA on descriptors (they are L2-normalised first, as `apply` does).

    Args:
        descriptors: (N, D_in) training descriptors, e.g. RootSIFT from a set of images.
        dim: number of principal axes to keep (D_out).
        whiten: whether `apply` whitens.
        source: provenance recorded in the projection.
        max_samples: fit on a seeded random subset of at most this many rows.
        seed: seed of that subset.

    Returns:
        The projection. Each axis is sign-normalised (its largest-|value| entry is positive,
        first such entry on ties), so refits on the same data give identical results.

    Raises:
        DelfxError: for fewer than dim + 1 samples, dim outside [1, D_in], non-finite input.
    """
    x = np.asarray(descriptors)
    if x.ndim != 2:
        raise DelfxError(f"fit_pca expects (N, D) descriptors, got shape {x.shape}")
    n, d_in = x.shape
    if not 1 <= dim <= d_in:
        raise DelfxError(f"PCA dimension must be in [1, {d_in}] for {d_in}-d descriptors, got {dim}")
    if n < dim + 1:
        raise DelfxError(f"fitting a {dim}-d PCA needs at least {dim + 1} descriptors, got {n}")
    if n > max_samples:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
        x = x[rows]
        n = max_samples
    if not np.isfinite(x).all():
        raise DelfxError("fit_pca: descriptors contain NaN or inf")

    # Two chunked passes in float64: exact enough for eigh, and memory stays O(chunk * D).
    chunks = range(0, n, _FIT_CHUNK)
    mean = sum(l2_normalize(x[i:i + _FIT_CHUNK]).astype(np.float64).sum(0) for i in chunks) / n
    scatter = np.zeros((d_in, d_in))
    for i in chunks:
        centred = l2_normalize(x[i:i + _FIT_CHUNK]).astype(np.float64) - mean
        scatter += centred.T @ centred
    eigenvalues, eigenvectors = np.linalg.eigh(scatter / (n - 1))  # ascending order

    order = np.argsort(-eigenvalues, kind="stable")[:dim]
    components = eigenvectors[:, order].T
    signs = np.sign(components[np.arange(dim), np.argmax(np.abs(components), axis=1)])
    components *= np.where(signs == 0, 1.0, signs)[:, None]
    # eigh may return tiny negative eigenvalues for rank-deficient data.
    variances = np.maximum(eigenvalues[order], 0.0)
    logger.info("fitted %d-d PCA on %d descriptors (%d-d), %.1f%% of the variance kept",
                dim, n, d_in, 100.0 * variances.sum() / max(eigenvalues.clip(0).sum(), 1e-30))
    return PCAProjection(mean, components, variances, whiten=whiten, source=source)
