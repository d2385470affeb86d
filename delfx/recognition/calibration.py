"""Scores comparable across queries: a small logistic model of "this prediction is right".

GAP ranks the predictions of all queries together, so a raw inlier count is not enough (with
RootSIFT on real photos, non-landmark photos reached 22-35 inliers against a median of 57 for
correct answers). The calibrated score is P(correct | evidence), with evidence features such as
log(1 + inliers), log(1 + margin over the best other landmark) and the classifier's
probability, fitted on labelled queries whose answers are known (leave-one-out over the
gallery). Stored as JSON (names, coefficients, standardisation): never a pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from delfx.artifacts import header, read_json_artifact
from delfx.errors import DelfxError
from delfx.paths import atomic_write_json

FORMAT_NAME, FORMAT_VERSION = "delfx-calibration", 1


@dataclass
class Calibration:
    names: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    fitted_on: dict

    def score(self, features: np.ndarray) -> np.ndarray:
        """P(correct) for rows of features (same order as `names`)."""
        z = (np.asarray(features, np.float64) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(z @ self.coef + self.intercept)))

    def to_json(self) -> dict:
        return {**header(FORMAT_NAME, FORMAT_VERSION), "names": self.names,
                "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": float(self.intercept),
                "fitted_on": self.fitted_on}

    def save(self, path: Path) -> None:
        atomic_write_json(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        return cls.from_json(read_json_artifact(path, FORMAT_NAME, {FORMAT_VERSION},
                                                what="delfx calibration",
                                                advice="fit it again (classify --calibrate)"))

    @classmethod
    def from_json(cls, data: dict) -> "Calibration":
        """The calibration of a checked `to_json()` dict."""
        return cls(data["names"], np.array(data["mean"]), np.array(data["scale"]),
                   np.array(data["coef"]), float(data["intercept"]), data.get("fitted_on", {}))


def fit_logistic(features: np.ndarray, correct: np.ndarray, names: list[str], *,
                 l2: float = 1.0, iterations: int = 50, fitted_on: dict | None = None) -> Calibration:
    """L2-regularised logistic regression by Newton's method (IRLS) on standardised features.

    Args:
        features: (N, F) evidence of N labelled predictions.
        correct: (N,) 1 when that prediction was right.
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(correct, np.float64)
    if x.ndim != 2 or len(x) != len(y) or len(x) < 4:
        raise DelfxError(f"calibration needs >= 4 labelled predictions, got {len(x)}")
    if y.min() == y.max():
        raise DelfxError("calibration needs both right and wrong predictions to learn from")
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-9] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    penalty = np.diag([l2] * (z.shape[1] - 1) + [0.0])  # no penalty on the intercept
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        gradient = z.T @ (p - y) + penalty @ w
        hessian = (z * (p * (1 - p))[:, None]).T @ z + penalty + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return Calibration(list(names), mean, scale, w[:-1], float(w[-1]),
                       {"predictions": int(len(y)), "right": int(y.sum()), **(fitted_on or {})})
