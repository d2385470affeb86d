"""`delfx export-model`: the built-in DELF model as a SavedModel with the official signature.

The exported folder loads with `tensorflow_hub.load(folder).signatures["default"]` exactly like
the official module, so everything that takes the official module (including delfx's own
`--model tfhub --model-path DIR`) takes it too. A `delfx_model.json` beside `saved_model.pb`
records what it is (model id, hash, PCA origin, score mode, versions).
"""

from __future__ import annotations

import logging
from pathlib import Path

from delfx.artifacts import has_format, header, read_json_artifact
from delfx.errors import DelfxError
from delfx.extractor.delf import DelfModel
from delfx.extractor.pyramid import tf_postprocess, tf_pyramid_extract
from delfx.paths import atomic_write_json, foreign_entries, write_directory_atomically
from delfx.versions import library_versions

log = logging.getLogger(__name__)

METADATA_NAME = "delfx_model.json"
EXPORT_FORMAT = "delfx-exported-delf"


def _export_module(model: DelfModel):
    import tensorflow as tf

    network, rf, pca = model.network, model.rf, model.pca
    fixed_threshold = model.fixed_score_threshold
    min_level_side = model.min_level_side

    class DelfExport(tf.Module):
        def __init__(self):
            super().__init__(name="delf")
            # Assigning the Keras models here makes tf.Module track (and save) their variables.
            self.backbone = network.backbone
            self.attention = network.attention
            if pca is not None:
                import numpy as np
                from delfx.extractor.pca import WHITEN_EPS
                scale = (1.0 / np.sqrt(pca.variances + WHITEN_EPS) if pca.whiten
                         else np.ones(pca.out_dim)).astype("float32")
                self.pca_mean = tf.Variable(pca.mean, trainable=False, name="pca_mean")
                self.pca_components = tf.Variable(pca.components, trainable=False,
                                                  name="pca_components")
                self.pca_scale = tf.Variable(scale, trainable=False, name="pca_scale")

        @tf.function(input_signature=[
            tf.TensorSpec([None, None, 3], tf.float32, name="image"),
            tf.TensorSpec([], tf.float32, name="score_threshold"),
            tf.TensorSpec([None], tf.float32, name="image_scales"),
            tf.TensorSpec([], tf.int32, name="max_feature_num")])
        def default(self, image, score_threshold, image_scales, max_feature_num):
            # Norm scores live on another scale than attention, and a head trained by delfx
            # brings its own threshold: as in-process, the argument then does not apply.
            threshold = (score_threshold if fixed_threshold is None
                         else tf.constant(fixed_threshold, tf.float32))
            locations, raw, scales, scores = tf_pyramid_extract(
                network, rf, image, threshold, image_scales, max_feature_num, min_level_side)
            descriptors = (tf_postprocess(raw, self.pca_mean, self.pca_components, self.pca_scale)
                           if pca is not None else raw)
            return {"locations": locations, "descriptors": descriptors, "scales": scales,
                    "attention": scores}

    return DelfExport()


def export_config(config, out_dir: Path, *, overwrite: bool = False) -> Path:
    """`delfx export-model`: build the model `config` names (auto: the built-in VGG16 DELF) and
    export it; refuses models the official signature cannot express."""
    from delfx.extractor.models import EXPORTABLE_MODELS, create_model, resolve_model
    if config.model == "delf-hybrid":
        raise DelfxError("export-model cannot export delf-hybrid: its keypoints come from OpenCV "
                         "SIFT, which the official DELF signature (a TensorFlow graph) cannot "
                         "express; extract with delfx, or export delf-vgg16")
    model = create_model(resolve_model(config, EXPORTABLE_MODELS,
                                       takes="export-model exports the built-in DELF models"))
    return export_model(model, out_dir, overwrite=overwrite)


def export_model(model: DelfModel, out_dir: Path, *, overwrite: bool = False) -> Path:
    """Write `model` as a SavedModel with the official DELF signature; return the folder."""
    import tensorflow as tf
    out_dir = Path(out_dir)
    _check_output(out_dir, overwrite)
    module = _export_module(model)

    def write(tmp: Path) -> None:
        tf.saved_model.save(module, str(tmp), signatures={"default": module.default})
        _write_metadata(tmp, model)

    write_directory_atomically(out_dir, write, lambda: _check_output(out_dir, overwrite))
    log.info("exported %s to %s", model.model_id, out_dir)
    return out_dir


# What an exported folder holds (tf.saved_model.save's files and our metadata): --overwrite
# replaces such a folder only, never one holding anything else.
EXPORT_ENTRIES = {"saved_model.pb", "fingerprint.pb", "variables", "assets", METADATA_NAME}


def _check_output(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DelfxError(f"{out_dir} exists and is not a folder")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise DelfxError(f"{out_dir} is not empty (use --overwrite to replace an export there)")
    if not has_format(out_dir / METADATA_NAME, (EXPORT_FORMAT,)):
        raise DelfxError(f"{out_dir} is not empty and is not a delfx export; refusing to "
                         f"replace it even with --overwrite")
    foreign = foreign_entries(out_dir, EXPORT_ENTRIES)
    if foreign:
        raise DelfxError(f"{out_dir} holds files that are not the export's "
                         f"({', '.join(foreign[:3])}): move them, then --overwrite")


def _write_metadata(tmp: Path, model: DelfModel) -> None:
    atomic_write_json(tmp / METADATA_NAME, {
        **header(EXPORT_FORMAT, 1), "model_id": model.model_id,
        "model_hash": model.model_hash, "descriptor_dim": model.descriptor_dim,
        "score": model.network.score_mode, "receptive_field": vars(model.rf),
        "pca_source": model.pca.source if model.pca is not None else None,
        "config": model.output_config(), "versions": library_versions(),
        "signature": "default(image, score_threshold, image_scales, max_feature_num) -> "
                     "locations, descriptors, scales, attention"})


def read_export_metadata(folder: Path) -> dict | None:
    path = Path(folder) / METADATA_NAME
    if not path.is_file():
        return None
    return read_json_artifact(path, EXPORT_FORMAT, {1}, what="delfx exported model")
