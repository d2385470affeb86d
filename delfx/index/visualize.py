"""The picture users look at to trust a match: both images side by side, inliers joined."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def draw_matches(image_a: np.ndarray, image_b: np.ndarray, points_a_yx: np.ndarray,
                 points_b_yx: np.ndarray, *, outliers_a_yx: np.ndarray | None = None,
                 outliers_b_yx: np.ndarray | None = None, max_height: int = 720,
                 title: str | None = None) -> np.ndarray:
    """RGB uint8 canvas: a | b, inlier correspondences as lines, outliers as faint dots."""
    import cv2
    scale = min(1.0, max_height / max(image_a.shape[0], image_b.shape[0]))
    a = cv2.resize(image_a, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image_a
    b = cv2.resize(image_b, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image_b
    height = max(a.shape[0], b.shape[0])
    canvas = np.full((height, a.shape[1] + b.shape[1], 3), 255, np.uint8)
    canvas[:a.shape[0], :a.shape[1]] = a
    canvas[:b.shape[0], a.shape[1]:] = b
    offset = a.shape[1]

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
    if title:
        cv2.putText(canvas, title, (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.putText(canvas, title, (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2, cv2.LINE_AA)
    return canvas


def save_png(path: Path, image_rgb: np.ndarray) -> None:
    import cv2
    if not cv2.imwrite(str(path), image_rgb[:, :, ::-1]):
        from delfx.errors import DelfxError
        raise DelfxError(f"cannot write {path}")
