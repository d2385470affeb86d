"""PCA post-processing: recovery of known axes, DELF's apply recipe, file format, determinism."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from scipy.linalg import subspace_angles

from delfx.errors import DelfxError
from delfx.extractor.pca import FORMAT_VERSION, PCAProjection, fit_pca

D_IN = 32
SIGMAS = np.array([0.08, 0.05, 0.03, 0.02])  # well separated, so each axis is identifiable


def synthetic(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-ish vectors mu + sum_k z_k sigma_k q_k with q_k orthonormal and orthogonal to mu.

    Independent sign-symmetric z_k keep the covariance diagonal in the basis (mu, q_1..q_4)
    even after the L2 normalisation that fit_pca applies first; so q_k are the true axes.
    Returns (data, axes (4, D_IN)).
    """
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((D_IN, D_IN)))
    mu, axes = basis[:, 0], basis[:, 1:1 + len(SIGMAS)].T
    z = rng.standard_normal((n, len(SIGMAS))) * SIGMAS
    tiny = rng.standard_normal((n, D_IN)) * 1e-4  # full rank, far below the real axes
    return (mu + z @ axes + tiny).astype(np.float32), axes


@pytest.fixture(scope="module")
def data():
    return synthetic()


def test_fit_recovers_known_axes(data):
    x, axes = data
    pca = fit_pca(x, dim=4)
    assert pca.in_dim == D_IN and pca.out_dim == 4
    assert pca.mean.dtype == pca.components.dtype == pca.variances.dtype == np.float32
    # Each axis individually (variances are well separated), and the subspace as a whole.
    assert np.all(np.abs(np.sum(pca.components * axes, axis=1)) > 0.999)
    assert np.max(subspace_angles(pca.components.T, axes.T)) < 1e-2
    assert np.all(np.diff(pca.variances) < 0)
    np.testing.assert_allclose(np.sqrt(pca.variances), SIGMAS, rtol=0.05)
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(4), atol=1e-5)


def test_sign_convention_and_deterministic_refit(data):
    x, _ = data
    a, b = fit_pca(x, dim=8), fit_pca(x, dim=8)
    for name in ("mean", "components", "variances"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.digest() == b.digest() and a == b
    rows = np.arange(a.out_dim)
    assert np.all(a.components[rows, np.argmax(np.abs(a.components), axis=1)] > 0)
    # Row order only changes float rounding, never the signs.
    shuffled = fit_pca(x[np.random.default_rng(1).permutation(len(x))], dim=8)
    np.testing.assert_allclose(shuffled.components[:4], a.components[:4], atol=1e-4)


def test_subsampling_is_seeded(data):
    x, axes = data
    a = fit_pca(x, dim=4, max_samples=5_000, seed=3)
    b = fit_pca(x, dim=4, max_samples=5_000, seed=3)
    c = fit_pca(x, dim=4, max_samples=5_000, seed=4)
    assert a.digest() == b.digest() != c.digest()
    assert np.max(subspace_angles(a.components.T, axes.T)) < 0.05


def test_apply_shape_norm_and_dtypes(data):
    x, _ = data
    pca = fit_pca(x, dim=4)
    out = pca.apply(x[:100])
    assert out.shape == (100, 4) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(pca.apply(x[:100].astype(np.float16)), out, atol=2e-2)
    # Scale invariance: the first step is an L2 normalisation.
    np.testing.assert_allclose(pca.apply(3.0 * x[:100]), out, atol=1e-5)
    empty = pca.apply(np.zeros((0, D_IN), np.float32))
    assert empty.shape == (0, 4) and empty.dtype == np.float32
    assert np.isfinite(pca.apply(np.zeros((2, D_IN), np.float32))).all()
    with pytest.raises(DelfxError, match="expects"):
        pca.apply(np.zeros((3, D_IN + 1), np.float32))


def test_apply_matches_delf_recipe(data):
    x, _ = data
    pca = fit_pca(x, dim=4, whiten=True)
    unit = x[:50] / np.linalg.norm(x[:50], axis=1, keepdims=True)
    expected = (unit - pca.mean) @ pca.components.T / np.sqrt(pca.variances)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(pca.apply(x[:50]), expected, atol=1e-4)


def test_whitening_gives_unit_variance_before_final_l2(data):
    x, _ = data
    plain, white = fit_pca(x, dim=4), fit_pca(x, dim=4, whiten=True)
    np.testing.assert_allclose(white.project(x).var(axis=0), 1.0, rtol=0.02)
    np.testing.assert_allclose(plain.project(x).var(axis=0), plain.variances, rtol=0.02)
    assert np.allclose(white.project(x).mean(axis=0), 0.0, atol=1e-2)
    assert white.digest() != plain.digest()  # the flag is part of the learned content


def test_save_load_round_trip(tmp_path, data):
    x, _ = data
    pca = fit_pca(x, dim=6, whiten=True, source="synthetic seed 0")
    path = pca.save(tmp_path / "pca.h5")
    loaded = PCAProjection.load(path)
    for name in ("mean", "components", "variances"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(pca, name))
    assert loaded.whiten is True and loaded.source == "synthetic seed 0"
    assert loaded.digest() == pca.digest() and loaded == pca
    np.testing.assert_array_equal(loaded.apply(x[:20]), pca.apply(x[:20]))
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left nothing behind
    with h5py.File(path) as f:  # a plain HDF5 file, no pickled objects
        assert f.attrs["format"] == "delfx-pca" and f.attrs["format_version"] == FORMAT_VERSION
        assert set(f) == {"mean", "components", "variances"}


def test_digest_ignores_source_only(data):
    x, _ = data
    a = fit_pca(x, dim=4, source="a")
    assert a.digest() == fit_pca(x, dim=4, source="b").digest()
    assert a.digest() != a.truncate(3).digest()
    assert len(a.digest()) == 64


@pytest.mark.parametrize("attr, value, match", [("format_version", 2, "version 2 is not supported"),
                                                 ("format", "something-else", "not a delfx-pca")])
def test_load_refuses_unknown_format_or_version(tmp_path, data, attr, value, match):
    path = fit_pca(data[0], dim=4).save(tmp_path / "pca.h5")
    with h5py.File(path, "r+") as f:
        f.attrs[attr] = value
    with pytest.raises(DelfxError, match=match):
        PCAProjection.load(path)


def test_load_refuses_missing_garbage_and_tampered(tmp_path, data):
    with pytest.raises(DelfxError, match="not found"):
        PCAProjection.load(tmp_path / "nope.h5")
    garbage = tmp_path / "garbage.h5"
    garbage.write_text("not hdf5")
    with pytest.raises(DelfxError, match="cannot read"):
        PCAProjection.load(garbage)
    path = fit_pca(data[0], dim=4).save(tmp_path / "pca.h5")
    with h5py.File(path, "r+") as f:
        f["mean"][0] += 1.0
    with pytest.raises(DelfxError, match="damaged"):
        PCAProjection.load(path)


def test_fit_errors(data):
    x, _ = data
    with pytest.raises(DelfxError, match="at least 5"):
        fit_pca(x[:4], dim=4)
    fit_pca(x[:5], dim=4)  # dim + 1 samples is enough
    with pytest.raises(DelfxError, match=r"\[1, 32\]"):
        fit_pca(x, dim=D_IN + 1)
    with pytest.raises(DelfxError, match=r"\[1, 32\]"):
        fit_pca(x, dim=0)
    with pytest.raises(DelfxError, match="NaN"):
        fit_pca(np.where(np.arange(D_IN) == 0, np.nan, x[:100]), dim=4)
    with pytest.raises(DelfxError, match="expects"):
        fit_pca(x[0], dim=4)


def test_truncate_equals_smaller_fit(data):
    x, _ = data
    big, small = fit_pca(x, dim=10), fit_pca(x, dim=4)
    assert big.truncate(4) == small and big.truncate(10) is big
    with pytest.raises(DelfxError):
        big.truncate(11)


def test_constructor_validates_and_freezes():
    with pytest.raises(DelfxError, match="do not fit"):
        PCAProjection(np.zeros(8), np.zeros((4, 7)), np.ones(4))
    with pytest.raises(DelfxError, match="variances"):
        PCAProjection(np.zeros(8), np.zeros((4, 8)), np.ones(3))
    pca = PCAProjection(np.zeros(8, np.float64), np.eye(8)[:2], [1.0, 0.5])
    assert pca.components.dtype == np.float32 and not pca.components.flags.writeable
