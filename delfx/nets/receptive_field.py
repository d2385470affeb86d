"""Receptive fields of backbone layers, and the keypoint location of every feature cell.

DELF places a keypoint at the centre of the receptive field of each feature-map cell. For a
chain of layers with kernel k, stride s and top/left padding p, walking from the input:

    size_out   = size_in + (k - 1) * jump_in          (how many input pixels a cell sees)
    jump_out   = jump_in * s                          (input pixels between neighbouring cells)
    centre_out = centre_in + ((k - 1) / 2 - p) * jump_in   (centre of cell 0, input pixels)

with pixel centres at integer coordinates. In DELF's convention (`CalculateReceptiveBoxes`) cell
i covers input pixels [stride * i - padding, stride * i - padding + size - 1], so
padding = (size - 1) / 2 - centre_0 and the centre of cell i is stride * i - padding + (size - 1) / 2.

Derivations (checked numerically against the real networks in tests/nets/test_backbones.py):

* VGG16 block4_conv3 (3x3 'same' convs, 2x2/2 pools): 2 convs at jump 1 -> 5; pool -> 6 (centre
  0.5, jump 2); 2 convs -> 14; pool -> 16 (centre 1.5, jump 4); 3 convs -> 40; pool -> 44 (centre
  3.5, jump 8); 3 convs -> 92. Size 92, stride 8, centre 3.5, padding 42.
* ResNet50 conv4_block6_out (Keras layout: stride-2 1x1 conv first in conv3/conv4 blocks):
  conv1 7x7/2 after 3 px zero padding -> 7 (centre 0, jump 2); max-pool 3x3/2 after 1 px -> 11
  (jump 4); 3 blocks with one 3x3 each -> 35; conv3: jump 8, 4 x 3x3 -> 99; conv4: jump 16,
  6 x 3x3 -> 291. Size 291, stride 16, centre 0, padding 145: DELF's published numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class ReceptiveField:
    size: float
    stride: float
    padding: float

    @property
    def first_centre(self) -> float:
        return (self.size - 1) / 2 - self.padding

    def centres(self, height: int, width: int) -> np.ndarray:
        """(height * width, 2) (y, x) centres of all cells, row-major, in input-level pixels."""
        ys = self.stride * np.arange(height, dtype=np.float64) + self.first_centre
        xs = self.stride * np.arange(width, dtype=np.float64) + self.first_centre
        grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
        return np.stack([grid_y.ravel(), grid_x.ravel()], axis=1)

    def box(self, i: int, j: int) -> tuple[float, float, float, float]:
        """(y0, x0, y1, x1) inclusive input pixels seen by cell (i, j), before clipping."""
        y0 = self.stride * i - self.padding
        x0 = self.stride * j - self.padding
        return y0, x0, y0 + self.size - 1, x0 + self.size - 1


def chain(layers: Iterable[tuple[int, int, float]]) -> ReceptiveField:
    """Receptive field of a chain of (kernel, stride, top/left padding) layers."""
    size, jump, centre = 1.0, 1.0, 0.0
    for kernel, stride, pad in layers:
        size += (kernel - 1) * jump
        centre += ((kernel - 1) / 2 - pad) * jump
        jump *= stride
    return ReceptiveField(size=size, stride=jump, padding=(size - 1) / 2 - centre)


def _vgg16_block4_conv3() -> list[tuple[int, int, float]]:
    conv, pool = (3, 1, 1), (2, 2, 0)
    return [conv, conv, pool, conv, conv, pool, conv, conv, conv, pool, conv, conv, conv]


def _resnet50_conv4() -> list[tuple[int, int, float]]:
    layers = [(7, 2, 3), (3, 2, 1)]
    for blocks, first_stride in ((3, 1), (4, 2), (6, 2)):
        for b in range(blocks):
            # 1x1 (stride 2 in the first block of conv3/conv4), 3x3 'same', 1x1
            layers += [(1, first_stride if b == 0 else 1, 0), (3, 1, 1), (1, 1, 0)]
    return layers


RECEPTIVE_FIELDS = {
    "vgg16": chain(_vgg16_block4_conv3()),    # ReceptiveField(92, 8, 42)
    "resnet50": chain(_resnet50_conv4()),     # ReceptiveField(291, 16, 145)
}
