"""Backbones and their receptive fields: the numbers, and the real networks agreeing with them."""

from __future__ import annotations

import numpy as np
import pytest

from delfx.nets.receptive_field import RECEPTIVE_FIELDS, ReceptiveField, chain

tf = pytest.importorskip("tensorflow")


def test_receptive_field_numbers():
    assert RECEPTIVE_FIELDS["vgg16"] == ReceptiveField(92, 8, 42)
    assert RECEPTIVE_FIELDS["resnet50"] == ReceptiveField(291, 16, 145)  # DELF's published values
    rf = chain([(3, 1, 1)])
    assert rf == ReceptiveField(3, 1, 1) and rf.centres(1, 2).tolist() == [[0, 0], [0, 1]]

def _positive_weights(net, seed=0):
    """Conv kernels > 0 summing to 1, zero biases: a pixel's impulse then reaches every cell
    whose receptive field holds it (monotone network), and no other cell."""
    import keras
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel = np.abs(rng.standard_normal(layer.kernel.shape)).astype(np.float32)
            layer.kernel.assign(kernel / kernel.sum(axis=(0, 1, 2), keepdims=True))
            if layer.use_bias:
                layer.bias.assign(np.zeros(layer.bias.shape, np.float32))

@pytest.mark.slow
@pytest.mark.parametrize("backbone,size", [("vgg16", 160), ("resnet50", 480)])
def test_receptive_field_matches_the_network(backbone, size):
    from delfx.nets.backbones import BACKBONES, delf_backbone
    net = delf_backbone(backbone, None)
    _positive_weights(net)
    rf = BACKBONES[backbone].receptive_field
    base = np.full((1, size, size, 3), 0.5, np.float32)
    reference = net(base).numpy()[0].sum(-1)
    for y, x in [(size // 2, size // 2), (size // 2 - 7, size // 2 + 3)]:
        image = base.copy()
        image[0, y, x] += 1e6
        changed = np.abs(net(image).numpy()[0].sum(-1) - reference) > 1e-7
        rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
        expected_rows = [i for i in range(changed.shape[0]) if rf.box(i, 0)[0] <= y <= rf.box(i, 0)[2]]
        expected_cols = [j for j in range(changed.shape[1]) if rf.box(0, j)[1] <= x <= rf.box(0, j)[3]]
        assert (rows.min(), rows.max()) == (expected_rows[0], expected_rows[-1])
        assert (cols.min(), cols.max()) == (expected_cols[0], expected_cols[-1])
