"""Shared fixtures. Tests run offline and CPU-only; data from ../shared is optional."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep TensorFlow quiet and on the CPU in every test process (and the Ray workers they start).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DELFX_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real photos, planar pairs): evaluation only, skipped when absent."""
    if not (SHARED_DATA / "landmarks-dev" / "labels.csv").is_file():
        pytest.skip(f"shared evaluation data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory):
    """A small `delfx sample-data` set, written once per test session."""
    from delfx.sample_data import write_sample_data
    return write_sample_data(tmp_path_factory.mktemp("sample") / "data", landmarks=4, views=3,
                             non_landmarks=4, long_side=240, seed=0)
