"""Which matcher verifies which features: `auto` is a learned model's own LightGlue, mutual
nearest neighbours otherwise; impossible combinations are refused in one line. Pure logic: runs
without the torch extra (tests/extractor/test_learned.py runs the matchers themselves)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from delfx.errors import DelfxError
from delfx.index.matchers import match, resolve_matcher
from delfx.index.search import SearchConfig
from delfx.store import ImageFeatures


@pytest.mark.parametrize("model_id, expected", [
    ("rootsift+pca40", "mnn"), ("delf-hybrid+pca40", "mnn"), ("delf-vgg16-hed+pca40", "mnn"),
    ("xfeat", "lightglue"), ("aliked", "lightglue"), ("disk", "lightglue"),
    ("xfeat+pca32", "mnn"),  # through a PCA: not the descriptors LightGlue was trained on
])
def test_auto_matcher(model_id, expected):
    assert resolve_matcher("auto", model_id) == expected
    assert SearchConfig.for_model(model_id).matcher == expected


def test_explicit_matchers_are_kept_or_refused():
    assert resolve_matcher("mnn", "xfeat") == "mnn"
    assert SearchConfig.for_model("xfeat", matcher="mnn").matcher == "mnn"
    with pytest.raises(DelfxError, match="lightglue matcher is for the learned models"):
        SearchConfig.for_model("rootsift+pca40", matcher="lightglue")
    with pytest.raises(DelfxError, match="unknown matcher 'nn'"):
        resolve_matcher("nn", "rootsift+pca40")


def test_auto_choice_is_logged(caplog):
    from delfx.index import matchers
    matchers._log_choice.cache_clear()  # logged once per process and model
    with caplog.at_level(logging.INFO, logger="delfx.index.matchers"):
        resolve_matcher("auto", "disk")
    assert "matcher auto -> lightglue" in caplog.text


def test_mnn_match_for_other_features():
    """`auto` for non-learned features is plain mutual nearest neighbours."""
    rng = np.random.default_rng(0)
    d = rng.normal(size=(20, 8)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)

    def features(desc):
        n = len(desc)
        return ImageFeatures("x", rng.uniform(0, 50, (n, 2)).astype(np.float32), desc,
                             np.ones(n, np.float32), np.ones(n, np.float32), 64, 64)
    m = match(features(d), features(d[::-1].copy()), "auto", "rootsift+pca40")
    assert sorted(zip(m.query_idx.tolist(), m.gallery_idx.tolist())) == [
        (i, 19 - i) for i in range(20)]
