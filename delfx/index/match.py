"""`delfx match`: two images, extracted with one model, matched (mutual nearest neighbours) and
verified (RANSAC); the result as data, and the picture that shows it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from delfx.config import ExtractConfig
from delfx.index.geometry import Matches, Verification, default_threshold, verify_pair
from delfx.index.matchers import match, resolve_matcher
from delfx.store import ImageFeatures


@dataclass
class MatchResult:
    """Two images' features, their putative matches and the verification of them."""

    paths: tuple[Path, Path]
    images: tuple[np.ndarray, np.ndarray]
    features: tuple[ImageFeatures, ImageFeatures]
    model_id: str
    matches: Matches
    verification: Verification

    def to_json(self, picture: Path | None = None, hloc: Path | None = None) -> dict[str, Any]:
        a, b = self.features
        t = self.verification.transform
        return {"image_a": str(self.paths[0]), "image_b": str(self.paths[1]),
                "model": self.model_id, "features_a": a.num_features,
                "features_b": b.num_features, "matches": len(self.matches),
                "inliers": self.verification.inliers, "ransac": self.verification.model,
                "transform_xy": None if t is None else np.asarray(t).round(6).tolist(),
                "picture": str(picture) if picture else None,
                "hloc": str(hloc) if hloc else None}

    @property
    def names(self) -> tuple[str, str]:
        """The two images' names in exported files: their file names."""
        a, b = (p.name for p in self.paths)
        if a == b:
            from delfx.errors import DelfxError
            raise DelfxError(f"both images are named {a}: an export needs two names")
        return a, b

    def write_hloc(self, folder: Path) -> None:
        """features.h5, matches.h5 (putative matches, with RANSAC's inliers) and pairs.txt of
        this pair, in hloc's layout (delfx.interop), in `folder`."""
        from dataclasses import replace

        from delfx.interop import write_hloc_features, write_hloc_matches
        folder = Path(folder)
        names = self.names
        own = {"features.h5", "matches.h5", "pairs.txt"}
        from delfx.errors import DelfxError
        from delfx.interop import HLOC_FEATURES, is_own
        if folder.exists() and any(folder.iterdir()) and (
                any(p.name not in own for p in folder.iterdir())
                or not is_own(folder / "features.h5", HLOC_FEATURES)):
            raise DelfxError(f"{folder} holds files of another kind than delfx's hloc export: "
                             f"use a new folder")
        folder.mkdir(parents=True, exist_ok=True)
        a, b = self.features
        write_hloc_features([replace(a, image_id=names[0]), replace(b, image_id=names[1])],
                            folder / "features.h5", overwrite=True,
                            model={"id": self.model_id})
        write_hloc_matches([(names[0], names[1], a.num_features, self.matches,
                             self.verification)], folder / "matches.h5", overwrite=True)
        from delfx.paths import atomic_write_bytes
        atomic_write_bytes(folder / "pairs.txt", f"{names[0]} {names[1]}\n".encode())

    def draw(self, out: Path) -> None:
        """Both images side by side, inliers joined, outliers as faint dots (PNG)."""
        from delfx.index.visualize import draw_matches, save_png
        a, b = self.features
        inl = self.verification.inlier_mask
        qa, qb = self.matches.query_idx, self.matches.gallery_idx
        canvas = draw_matches(self.images[0], self.images[1], a.locations[qa[inl]],
                              b.locations[qb[inl]], outliers_a_yx=a.locations[qa[~inl]],
                              outliers_b_yx=b.locations[qb[~inl]],
                              title=f"{self.model_id}: {self.verification.inliers} inliers / "
                                    f"{len(self.matches)} matches")
        save_png(out, canvas)


def match_images(image_a: Path, image_b: Path, config: ExtractConfig, *, ransac: str = "affine",
                 threshold: float | None = None, matcher: str = "auto") -> MatchResult:
    """Extract both images with `config`'s model, match and verify them.

    Args:
        threshold: RANSAC residual as a share of image b's diagonal (default by model).
        matcher: 'auto', 'mnn' or 'lightglue' (delfx.index.matchers).
    """
    from delfx.extractor.models import create_model
    from delfx.images import load_image
    images = tuple(load_image(p, max_pixels=config.max_pixels) for p in (image_a, image_b))
    model = create_model(config)  # after the cheap checks: a bad image is refused at once
    matcher = resolve_matcher(matcher, model.model_id)
    a, b = (model.extract(image, str(p)) for image, p in zip(images, (image_a, image_b)))
    matches = match(a, b, matcher, model.model_id)
    verification = verify_pair(a.locations, b.locations, matches, model=ransac,
                               relative_threshold=threshold or default_threshold(model.model_id),
                               image_size_b=(b.height, b.width))
    return MatchResult((Path(image_a), Path(image_b)), images, (a, b), model.model_id, matches,
                       verification)
