"""The match picture: a divider between the images, at most MAX_LINES lines drawn."""

from __future__ import annotations

import numpy as np

from delfx.index.visualize import MAX_LINES, draw_matches


def _points(n, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(10, 190, (n, 2))


def test_divider_and_capped_lines():
    a = np.full((200, 160, 3), 255, np.uint8)
    b = np.full((200, 180, 3), 255, np.uint8)
    few_a, few_b = _points(MAX_LINES, 1), _points(MAX_LINES, 2)
    canvas = draw_matches(a, b, few_a, few_b)
    assert canvas.shape == (200, 340, 3)
    assert (canvas[:, 159:161] == 0).all()  # the divider
    # up to the cap every line is drawn: a larger cap changes nothing
    np.testing.assert_array_equal(canvas, draw_matches(a, b, few_a, few_b,
                                                       max_lines=MAX_LINES + 1))
    many_a, many_b = _points(3 * MAX_LINES, 3), _points(3 * MAX_LINES, 4)
    capped = draw_matches(a, b, many_a, many_b)
    everything = draw_matches(a, b, many_a, many_b, max_lines=3 * MAX_LINES)
    inked = lambda c: int((c.sum(axis=2) < 600).sum())  # noqa: E731
    assert inked(capped) < inked(everything)
    np.testing.assert_array_equal(capped, draw_matches(a, b, many_a, many_b))  # seeded
