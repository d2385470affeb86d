"""VerificationMemo: a pair is verified once, and only records with the same content share it."""

from __future__ import annotations

import numpy as np

import delfx.index.search as search
from delfx.index.search import SearchConfig, VerificationMemo, verify_candidates
from delfx.store import ImageFeatures


def _record(image_id, seed, n=60):
    rng = np.random.default_rng(seed)
    locations = rng.uniform(0, 200, (n, 2)).astype(np.float32)
    descriptors = rng.normal(size=(n, 8)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    return ImageFeatures(image_id, locations, descriptors, np.ones(n, np.float32),
                         np.ones(n, np.float32), 200, 200)


def test_pairs_are_verified_once_and_keyed_by_content(monkeypatch):
    calls = []
    real = search.verify_pairs

    def counting(pairs, **kw):
        pairs = list(pairs)
        calls.append(len(pairs))
        return real(pairs, **kw)

    monkeypatch.setattr(search, "verify_pairs", counting)
    config = SearchConfig(matcher="mnn", features="rootsift+pca40")
    query, a, b = _record("q", 0), _record("a", 1), _record("b", 2)
    query_twin = _record("q", 0)  # another object, the same content
    memo = VerificationMemo()
    first = verify_candidates(query, [a, b], config, memo)
    again = verify_candidates(query_twin, [b, a], config, memo)
    assert calls == [2, 0] and memo.hits == 2
    assert [r.inliers for r in again] == [first[1].inliers, first[0].inliers]
    # same id, other features (a query set and a gallery sharing an id): verified afresh
    verify_candidates(_record("q", 9), [a], config, memo)
    # other settings: verified afresh
    verify_candidates(query, [a], SearchConfig(matcher="mnn", features="rootsift+pca40",
                                               ransac="homography"), memo)
    assert calls == [2, 0, 1, 1]
    # without a memo, and beyond its capacity, every call verifies
    verify_candidates(query, [a], config)
    full = VerificationMemo(capacity=1)
    verify_candidates(query, [a, b], config, full)
    verify_candidates(query, [a, b], config, full)
    assert calls[-3:] == [1, 2, 1] and full.hits == 1


def test_kept_matches_serve_other_ransac_settings(monkeypatch):
    matched = []
    real = search.match

    def counting(*args, **kw):
        matched.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(search, "match", counting)
    query, a = _record("q", 0), _record("a", 1)
    affine = SearchConfig(matcher="mnn", features="rootsift+pca40")
    similarity = SearchConfig(matcher="mnn", features="rootsift+pca40", ransac="similarity")
    plain = VerificationMemo()  # verifications only: another RANSAC matches again
    verify_candidates(query, [a], affine, plain)
    verify_candidates(query, [a], similarity, plain)
    assert len(matched) == 2
    keeping = VerificationMemo(matches=10)
    first = verify_candidates(query, [a], affine, keeping)
    other = verify_candidates(query, [a], similarity, keeping)
    assert len(matched) == 3  # one more match, two verifications
    assert other[0].model == "similarity" and first[0].model == "affine"
    assert other[0].num_matches == first[0].num_matches
