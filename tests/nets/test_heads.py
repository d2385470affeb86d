"""HeadConfig: one validation for both trained-head families (classifier and GeM models)."""

from __future__ import annotations

import pytest

from delfx.classifier.model import ClassifierConfig
from delfx.errors import DelfxError
from delfx.globalnet.model import GlobalConfig
from delfx.nets.heads import HeadConfig, auto_batchnorm_momentum


@pytest.mark.parametrize("family", [ClassifierConfig, GlobalConfig])
@pytest.mark.parametrize("changes, message", [
    ({"units": True}, "units must be an integer"),          # True is an int to Python only
    ({"epochs": 2.5}, "epochs must be an integer"),
    ({"blocks": -1}, "blocks must be an integer >= 0"),
    ({"batchnorm_momentum": 1.0}, "batchnorm_momentum must be in"),
    ({"batchnorm_momentum": "fast"}, "batchnorm_momentum must be in"),
    ({"class_weighting": 1}, "class_weighting must be true or false"),
    ({"activation": ""}, "activation must be a Keras activation name"),
    ({"dropout": 1.0}, "dropout must be in"),
    ({"validation_share": 1.0}, "validation_share must be in"),
    ({"learning_rate": 1e-6, "min_learning_rate": 1e-5}, "min_learning_rate <= learning_rate"),
    ({"lr_factor": 1.5}, "lr_factor must be in"),
    ({"learning_rate": "big"}, "learning_rate must be a number"),
])
def test_both_families_refuse_the_same_bad_values(family, changes, message):
    with pytest.raises(DelfxError, match=message):
        family(**changes)


def test_shared_fields_are_one_set_with_family_defaults():
    shared = {f for f in HeadConfig.__dataclass_fields__}
    assert len(shared) == 16
    assert shared <= set(ClassifierConfig.__dataclass_fields__)
    assert shared <= set(GlobalConfig.__dataclass_fields__)
    assert (ClassifierConfig().batch_size, GlobalConfig().batch_size) == (256, 16)
    assert (ClassifierConfig().epochs, GlobalConfig().epochs) == (100, 40)


def test_family_checks_and_messages():
    with pytest.raises(DelfxError, match="classifier config: head must be one of"):
        ClassifierConfig(head="mlp")
    with pytest.raises(DelfxError, match="global model config: need 32 <= crop_size"):
        GlobalConfig(crop_size=16)
    with pytest.raises(DelfxError, match="global model config: fine_tune must be true or false"):
        GlobalConfig(fine_tune="yes")
    with pytest.raises(DelfxError, match="unknown setting"):
        ClassifierConfig.from_dict({"units": 8, "bogus": 1})


def test_round_trip_and_momentum():
    config = GlobalConfig(units=64, blocks=2, seed=3)
    assert GlobalConfig.from_dict(config.to_dict()) == config
    assert config.momentum(4) == pytest.approx(auto_batchnorm_momentum(4)) == pytest.approx(0.75)
    assert config.replace(batchnorm_momentum=0.5).momentum(4) == 0.5
    assert auto_batchnorm_momentum(1000) == pytest.approx(0.99)
