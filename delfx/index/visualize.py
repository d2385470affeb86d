"""The picture users look at to trust a match: both images side by side, inliers joined."""

from __future__ import annotations

from pathlib import Path

import numpy as np


# More lines than this hide each other (274 inliers drew a solid band); a sample shows the
# transform as well and the title gives the full count.
MAX_LINES = 80


def draw_matches(image_a: np.ndarray, image_b: np.ndarray, points_a_yx: np.ndarray,
                 points_b_yx: np.ndarray, *, outliers_a_yx: np.ndarray | None = None,
                 outliers_b_yx: np.ndarray | None = None, max_height: int = 720,
                 title: str | None = None, max_lines: int = MAX_LINES) -> np.ndarray:
    """RGB uint8 canvas: a | b with a divider, at most `max_lines` inlier correspondences as
    lines (an even, seeded sample when there are more: the title says how many are drawn),
    outliers as faint dots."""
    import cv2
    scale = min(1.0, max_height / max(image_a.shape[0], image_b.shape[0]))
    a = cv2.resize(image_a, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image_a
    b = cv2.resize(image_b, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image_b
    height = max(a.shape[0], b.shape[0])
    canvas = np.full((height, a.shape[1] + b.shape[1], 3), 255, np.uint8)
    canvas[:a.shape[0], :a.shape[1]] = a
    canvas[:b.shape[0], a.shape[1]:] = b
    offset = a.shape[1]
    if len(points_a_yx) > max_lines:
        keep = np.sort(np.random.default_rng(0).choice(len(points_a_yx), max_lines,
                                                       replace=False))
        title = f"{title or ''} (lines: {max_lines} of {len(points_a_yx)} inliers)".strip()
        points_a_yx, points_b_yx = np.asarray(points_a_yx)[keep], np.asarray(points_b_yx)[keep]

    def point(yx, shift=0):
        return int(round(yx[1] * scale)) + shift, int(round(yx[0] * scale))

    for pts, shift in ((outliers_a_yx, 0), (outliers_b_yx, offset)):
        for yx in ([] if pts is None else pts):
            cv2.circle(canvas, point(yx, shift), 1, (180, 180, 180), -1, cv2.LINE_AA)
    rng = np.random.default_rng(0)
    for ya, yb in zip(points_a_yx, points_b_yx):
        colour = tuple(int(c) for c in rng.integers(40, 230, 3))
        cv2.line(canvas, point(ya), point(yb, offset), colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, point(ya), 3, colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, point(yb, offset), 3, colour, 1, cv2.LINE_AA)
    canvas[:, max(offset - 1, 0):offset + 1] = 0  # the divider: where a ends and b begins
    if title:
        cv2.putText(canvas, title, (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.putText(canvas, title, (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2, cv2.LINE_AA)
    return canvas


def save_png(path: Path, image_rgb: np.ndarray) -> None:
    import cv2
    if not cv2.imwrite(str(path), image_rgb[:, :, ::-1]):
        from delfx.errors import DelfxError
        raise DelfxError(f"cannot write {path}")
