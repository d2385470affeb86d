"""RootSIFT behind the FeatureModel interface: descriptors, geometry, config, PCA, and the cost
of the 128 -> 40 reduction (run with -s to see the figures)."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
from scipy.spatial import cKDTree
from skimage import data as skdata
from sklearn.datasets import load_sample_images

from delfx.config import ExtractConfig
from delfx.errors import DelfxError
from delfx.extractor.base import FeatureModel
from delfx.extractor.pca import fit_pca
from delfx.extractor.rootsift import RootSIFT, root_sift

RAW = ExtractConfig(model="rootsift", descriptor_dim=128, max_side=1024, max_features=1000)
# PCA training photos, disjoint from every image the tests match on.
TRAIN_IMAGES = ("camera", "coins", "moon", "brick", "gravel", "clock", "horse", "text", "page",
                "grass", "hubble_deep_field", "immunohistochemistry")


def rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) from the assorted skimage formats (grey, bool, RGBA)."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def eval_images() -> dict[str, np.ndarray]:
    china, flower = load_sample_images().images
    return {"astronaut": skdata.astronaut(), "coffee": skdata.coffee(),
            "chelsea": skdata.chelsea(), "rocket": skdata.rocket(), "china": china,
            "flower": flower}


def random_homography(h: int, w: int, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """Moves each image corner by up to `jitter` of the image size: perspective + scale."""
    src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    dst = (src + rng.uniform(-jitter, jitter, (4, 2)) * [w, h]).astype(np.float32)
    return cv2.getPerspectiveTransform(src, dst)


def transfer(locations_yx: np.ndarray, homography: np.ndarray) -> np.ndarray:
    """(y, x) through a homography in OpenCV's (x, y) pixel-centre convention, back to (y, x)."""
    xy = locations_yx[:, ::-1].astype(np.float64)[None]
    return cv2.perspectiveTransform(xy, homography)[0][:, ::-1]


def mutual_nn(d1: np.ndarray, d2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sim = d1.astype(np.float32) @ d2.astype(np.float32).T
    forward, backward = sim.argmax(1), sim.argmax(0)
    i = np.flatnonzero(backward[forward] == np.arange(len(d1)))
    return i, forward[i]


def reprojection_errors(f1, f2, homography) -> np.ndarray:
    i, j = mutual_nn(f1.descriptors, f2.descriptors)
    return np.linalg.norm(transfer(f1.locations[i], homography) - f2.locations[j], axis=1)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


@pytest.fixture(scope="module")
def model() -> RootSIFT:
    return RootSIFT(RAW)


@pytest.fixture(scope="module")
def train_pca():
    """40-d PCA fitted on RootSIFT descriptors of TRAIN_IMAGES only."""
    extractor = RootSIFT(RAW)
    descriptors = np.concatenate([extractor.extract(rgb(getattr(skdata, name)())).descriptors
                                  for name in TRAIN_IMAGES])
    return fit_pca(descriptors, dim=40, source="skimage: " + ",".join(TRAIN_IMAGES))


# --- descriptors ---------------------------------------------------------------------------

def test_descriptors_are_rootsift(model, astronaut):
    features = model.extract(astronaut, "astronaut")
    features.validate(descriptor_dim=128)
    d = features.descriptors
    assert features.ok and 500 <= features.num_features <= 1000
    assert d.shape[1] == 128 and d.dtype == np.float32 and model.descriptor_dim == 128
    assert (d >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    # Squares of RootSIFT are L1-normalised histograms: unit L1 norm and the Hellinger kernel.
    np.testing.assert_allclose((d ** 2).sum(axis=1), 1.0, atol=1e-5)


def test_hellinger_property_on_real_sift(astronaut):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    _, sift = cv2.SIFT_create(nfeatures=200).detectAndCompute(gray, None)
    root = root_sift(sift)
    h = sift / sift.sum(axis=1, keepdims=True)
    hellinger = np.sqrt(h[:, None, :] * h[None, :, :]).sum(-1)
    np.testing.assert_allclose(root @ root.T, hellinger, atol=1e-5)


def test_deterministic_and_picklable(model, astronaut):
    a, b = model.extract(astronaut), model.extract(astronaut.copy())
    for name in ("locations", "descriptors", "scales", "scores"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    # Ray ships actors' arguments by pickle: the model must survive it and give the same output.
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.extract(astronaut).descriptors, a.descriptors)
    assert clone.model_hash == model.model_hash


# --- keypoints -----------------------------------------------------------------------------

@pytest.mark.parametrize("max_side", [None, 300])
def test_locations_inside_image(astronaut, max_side):
    coffee = skdata.coffee()  # not square: catches swapped y/x
    features = RootSIFT(RAW.replace(max_side=max_side)).extract(coffee)
    y, x = features.locations.T
    h, w = coffee.shape[:2]
    assert features.num_features > 100 and (features.height, features.width) == (h, w)
    assert (y >= -0.5).all() and (y <= h - 0.5).all() and (x >= -0.5).all() and (x <= w - 0.5).all()
    assert y.max() > 0.6 * h and x.max() > 0.6 * w  # spread over the whole image, both axes
    assert (features.scales > 0).all() and np.isfinite(features.scales).all()


def test_max_features_keeps_strongest_in_score_order(astronaut):
    full = RootSIFT(RAW).extract(astronaut)
    top = RootSIFT(RAW.replace(max_features=50)).extract(astronaut)
    assert top.num_features == 50 and full.num_features <= 1000
    for features in (top, full):
        assert (np.diff(features.scores) <= 0).all()
        sorted_ = features.sorted_by_score()
        np.testing.assert_array_equal(sorted_.locations, features.locations)
    # The 50 kept are the 50 strongest of the larger run, same descriptors.
    np.testing.assert_array_equal(top.scores, full.scores[:50])
    np.testing.assert_array_equal(top.locations, full.locations[:50])
    np.testing.assert_allclose(top.descriptors, full.descriptors[:50], atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 3, 3), (8, 8, 3), (16, 16, 3), (20, 300, 3),
                                   (300, 17, 3)])
def test_tiny_images_do_not_crash(model, shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    features = model.extract(image, "tiny")
    features.validate(descriptor_dim=128)
    assert features.descriptors.shape[1] == 128 and features.num_features < 50


@pytest.mark.parametrize("value", [0, 127, 255])
def test_uniform_image_has_no_features(model, value):
    features = model.extract(np.full((200, 300, 3), value, np.uint8))
    assert features.ok and features.num_features == 0
    assert features.descriptors.shape == (0, 128)


def test_grey_looking_rgb_equals_grey(model):
    camera = skdata.camera()
    as_rgb, as_rgba = np.stack([camera] * 3, -1), np.dstack([camera] * 3 + [np.full_like(camera, 255)])
    expected = model._extract(camera)
    for image in (as_rgb, as_rgba, camera[:, :, None]):
        for got, want in zip(model._extract(image), expected):
            np.testing.assert_array_equal(got, want)
    assert len(expected[0]) > 100


def test_batch_of_mixed_sizes(model, astronaut):
    images = [astronaut, skdata.coffee(), np.zeros((5, 5, 3), np.uint8)]
    batch = model.extract_batch(images, ["a", "b", "c"])
    assert [f.image_id for f in batch] == ["a", "b", "c"]
    np.testing.assert_array_equal(batch[0].descriptors, model.extract(astronaut).descriptors)
    assert batch[2].num_features == 0


# --- geometry: pixel-centre convention, end to end through FeatureModel.extract -------------

@pytest.mark.parametrize("max_side", [None, 384, 300])
def test_pixel_centres_at_integers_under_flip(max_side):
    """Rotating by 180 degrees maps pixel (y, x) to (H-1-y, W-1-x) exactly when pixel centres
    are at integers; any constant offset c in the reported locations shows up as 2c here (OpenCV
    SIFT's default upscale gives c = 0.25 px). With max_side the resize and the base class's
    mapping back to original pixels are included."""
    image = skdata.coffee()
    h, w = image.shape[:2]
    model = RootSIFT(RAW.replace(max_side=max_side))
    assert isinstance(model, FeatureModel)
    a = model.extract(image)
    b = model.extract(np.ascontiguousarray(image[::-1, ::-1]))
    expected = np.stack([h - 1 - a.locations[:, 0], w - 1 - a.locations[:, 1]], axis=1)
    distance, nearest = cKDTree(b.locations).query(expected)
    close = distance < 1.5
    assert close.sum() > 100
    offset = (b.locations[nearest[close]] - expected[close]).mean(axis=0)
    assert np.abs(offset).max() < 0.05, offset


@pytest.mark.parametrize("precise", [True, False])
def test_both_upscalings_put_pixel_centres_at_integers(precise):
    """The benchmarks compare OpenCV's default (imprecise) upscaling with delfx's precise one;
    detect_rootsift subtracts the default's +0.25 px, so both keep the convention (the same
    flip test as above, at the detector level; without the correction the offset is 0.5)."""
    from delfx.extractor.rootsift import detect_rootsift
    image = skdata.coffee()
    h, w = image.shape[:2]
    a = detect_rootsift(image, 1000, precise)[0]
    b = detect_rootsift(np.ascontiguousarray(image[::-1, ::-1]), 1000, precise)[0]
    expected = np.stack([h - 1 - a[:, 0], w - 1 - a[:, 1]], axis=1)
    distance, nearest = cKDTree(b).query(expected)
    close = distance < 1.5
    assert close.sum() > 100
    offset = (b[nearest[close]] - expected[close]).mean(axis=0)
    assert np.abs(offset).max() < 0.05, offset


@pytest.mark.parametrize("max_side", [None, 400])
def test_keypoints_follow_known_homography(astronaut, max_side):
    """Image and warp matched by mutual NN agree with the homography to < 2 px (median).

    max_side=400 makes the base class resize both images and map locations back; scales are
    only checked relative to each other (base.py's `scales_in_pixels` handling may change their
    absolute unit)."""
    h, w = astronaut.shape[:2]
    homography = random_homography(h, w, np.random.default_rng(7), jitter=0.1)
    warped = cv2.warpPerspective(astronaut, homography, (w, h))
    model = RootSIFT(RAW.replace(max_side=max_side))
    f1, f2 = model.extract(astronaut), model.extract(warped)
    i, j = mutual_nn(f1.descriptors, f2.descriptors)
    errors = np.linalg.norm(transfer(f1.locations[i], homography) - f2.locations[j], axis=1)
    assert len(i) > 200 and np.median(errors) < 2.0, (len(i), np.median(errors))
    good = errors < 3
    assert good.sum() > 150
    # Scale ratio of matched keypoints vs the local area scale of the homography.
    y, x = f1.locations[i[good]].T.astype(np.float64)
    eps = 0.5
    dx = transfer(np.stack([y, x + eps], 1), homography) - transfer(np.stack([y, x], 1), homography)
    dy = transfer(np.stack([y + eps, x], 1), homography) - transfer(np.stack([y, x], 1), homography)
    local = np.sqrt(np.abs(dx[:, 1] * dy[:, 0] - dx[:, 0] * dy[:, 1])) / eps
    ratio = f2.scales[j[good]] / f1.scales[i[good]] / local
    assert 0.8 < np.median(ratio) < 1.25


def test_scales_roughly_in_pixels_after_resize(astronaut):
    """Loose on purpose: passes whether or not base.py rescales `scales_in_pixels` models."""
    full = RootSIFT(RAW).extract(astronaut)
    small = RootSIFT(RAW.replace(max_side=384)).extract(astronaut)
    assert 0.5 < np.median(small.scales) / np.median(full.scales) < 2.0
    assert RootSIFT.scales_in_pixels is True


# --- configuration, PCA variant, hashing ----------------------------------------------------

def test_pca40_variant(train_pca, astronaut):
    config = RAW.replace(descriptor_dim=40)
    with pytest.raises(DelfxError, match="fit-pca"):
        RootSIFT(config)
    model = RootSIFT(config, train_pca)
    features = model.extract(astronaut)
    features.validate(descriptor_dim=40)
    assert model.descriptor_dim == 40 and features.descriptors.shape[1] == 40
    np.testing.assert_allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-5)
    assert model.model_id == "rootsift+pca40" and model.weights_digest() == train_pca.digest()
    assert model.describe()["descriptor_dim"] == 40
    # Same keypoints as raw RootSIFT; descriptors are the PCA of the raw ones.
    raw = RootSIFT(RAW).extract(astronaut)
    np.testing.assert_array_equal(features.locations, raw.locations)
    np.testing.assert_allclose(features.descriptors, train_pca.apply(raw.descriptors), atol=1e-5)


def test_dimension_rules(train_pca):
    assert RootSIFT(RAW.replace(descriptor_dim=0)).descriptor_dim == 128
    raw = RootSIFT(RAW)
    assert raw.model_id == "rootsift" and raw.weights_digest() == "" and raw.pca is None
    with pytest.raises(DelfxError, match="descriptor_dim 0"):
        RootSIFT(RAW.replace(descriptor_dim=0), train_pca)
    with pytest.raises(DelfxError, match="at least 64"):
        RootSIFT(RAW.replace(descriptor_dim=64), train_pca)
    # A larger PCA is truncated to the leading axes, as DELF slices its PCA matrix.
    smaller = RootSIFT(RAW.replace(descriptor_dim=24), train_pca)
    assert smaller.descriptor_dim == 24 and smaller.model_id == "rootsift+pca24"
    assert smaller.weights_digest() == train_pca.truncate(24).digest()
    foreign = fit_pca(np.random.default_rng(0).random((200, 64)), dim=40)
    with pytest.raises(DelfxError, match="128-d RootSIFT"):
        RootSIFT(RAW.replace(descriptor_dim=40), foreign)
    # The default (DELF) config asks for 40-d output: RootSIFT then needs a PCA.
    with pytest.raises(DelfxError, match="fit-pca"):
        RootSIFT(ExtractConfig())


def test_hash_tracks_only_rootsift_fields(train_pca):
    base = RootSIFT(RAW).model_hash
    assert RootSIFT(RAW.replace(max_features=500)).model_hash != base
    assert RootSIFT(RAW.replace(max_side=512)).model_hash != base
    assert RootSIFT(RAW.replace(descriptor_dtype="float32")).model_hash != base
    for change in ({"score_threshold": 5.0}, {"scales": (1.0,)}, {"precision": "bfloat16"},
                   {"model_path": "x"}, {"preset": "fast"}):
        assert RootSIFT(RAW.replace(**change)).model_hash == base, change
    sized = RAW.replace(image_size=256)
    assert RootSIFT(sized).model_hash != base
    assert RootSIFT(sized.replace(batch_size=8)).model_hash == RootSIFT(sized).model_hash
    pca40 = RAW.replace(descriptor_dim=40)
    whitened = fit_pca(np.random.default_rng(0).random((500, 128)), dim=40, whiten=True)
    assert RootSIFT(pca40, train_pca).model_hash != RootSIFT(pca40, whitened).model_hash
    assert set(RootSIFT(RAW).output_config()) == {
        "image_size", "max_side", "max_features", "descriptor_dim", "descriptor_dtype",
        "min_side", "sift"}


# --- what the 128 -> 40 reduction costs ------------------------------------------------------

def test_pca40_keeps_most_correct_matches(train_pca):
    """Correct mutual-NN matches (reprojection < 3 px) on (photo, warped photo) pairs, 128-d
    RootSIFT vs RootSIFT + PCA-40 fitted on TRAIN_IMAGES (none of these photos)."""
    raw = RootSIFT(RAW)
    reduced = RootSIFT(RAW.replace(descriptor_dim=40), train_pca)
    rng = np.random.default_rng(2019)
    totals = {"128": [0, 0], "pca40": [0, 0]}
    print(f"\n{'pair':<14}{'jitter':>7}{'128-d correct/mutual':>23}{'pca40 correct/mutual':>23}")
    for name, image in eval_images().items():
        image = rgb(image)
        h, w = image.shape[:2]
        for jitter in (0.1, 0.2):
            homography = random_homography(h, w, rng, jitter)
            warped = cv2.warpPerspective(image, homography, (w, h))
            row = []
            for key, model in (("128", raw), ("pca40", reduced)):
                errors = reprojection_errors(model.extract(image), model.extract(warped),
                                             homography)
                correct = int((errors < 3).sum())
                totals[key][0] += correct
                totals[key][1] += len(errors)
                row.append(f"{correct:>5} / {len(errors):<5} ({correct / max(len(errors), 1):.0%})")
            print(f"{name:<14}{jitter:>7.2f}{row[0]:>23}{row[1]:>23}")
    (c128, m128), (c40, m40) = totals["128"], totals["pca40"]
    print(f"{'total':<14}{'':>7}{c128:>10} / {m128:<10}{c40:>10} / {m40:<10}"
          f"\nPCA-40 keeps {c40 / c128:.1%} of the correct 128-d matches; "
          f"precision {c128 / m128:.1%} -> {c40 / m40:.1%}")
    assert c128 > 1000
    assert c40 > 0.5 * c128
