"""Config presets and the override order: preset < file < environment/command line."""

from __future__ import annotations

import json

import pytest

from delfx.config import DELF_SCALES, PRESETS, resolve_extract_config
from delfx.errors import DelfxError


def test_presets():
    assert PRESETS["seed128"].image_size == 128 and PRESETS["seed128"].batch_size > 1
    assert PRESETS["delf"].max_side == 1024 and PRESETS["delf"].scales == DELF_SCALES
    assert PRESETS["fast"].max_side < 1024
    for name, config in PRESETS.items():
        assert config.preset == name and config.to_dict()["scales"] == list(config.scales)


def test_override_order(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[extract]\nmax_features = 300\nscales = [0.5, 1.0]\nmodel = "rootsift"\n')
    config = resolve_extract_config("seed128", toml, {"max_features": 200, "model": None})
    assert config.max_features == 200          # override beats file
    assert config.scales == (0.5, 1.0)         # file beats preset
    assert config.model == "rootsift"          # None = not given
    assert config.image_size == 128 and config.preset == "seed128"
    as_json = tmp_path / "c.json"
    as_json.write_text(json.dumps({"max_side": 640}))
    assert resolve_extract_config("delf", as_json).max_side == 640


def test_bad_configs(tmp_path):
    with pytest.raises(DelfxError, match="unknown preset"):
        resolve_extract_config("nope")
    with pytest.raises(DelfxError, match="unknown config keys"):
        resolve_extract_config("delf", overrides={"colour": 1})
    with pytest.raises(DelfxError, match="batch_size > 1 needs image_size"):
        resolve_extract_config("delf", overrides={"batch_size": 8})
    bad = tmp_path / "bad.toml"
    bad.write_text("max_features = [")
    with pytest.raises(DelfxError, match="cannot read config file"):
        resolve_extract_config("delf", bad)
