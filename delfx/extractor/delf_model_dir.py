"""The model directory `delfx train-delf` writes and `--model delf-vgg16 --model-path DIR` reads.

    delf_model.json          header (format delfx-delf-model), backbone, what was trained,
                             score threshold, classes, training config and summary, versions
    attention.weights.h5     the attention head (Keras weights, no pickle)
    backbone.weights.h5      only when block4 was fine-tuned: the whole VGG16-to-block4 backbone
    pca.h5                   PCA re-fitted on the trained model's descriptors of its images
    curves.json, curves.png  loss / accuracy / learning rate per epoch

Its own module so that the model registry (which reads it) and the trainer (which writes it)
do not import each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from delfx.artifacts import has_format, header, read_json_artifact
from delfx.paths import atomic_write_json

MODEL_JSON = "delf_model.json"
MODEL_FORMAT, MODEL_VERSION = "delfx-delf-model", 1
ATTENTION_FILE, BACKBONE_FILE, PCA_FILE = "attention.weights.h5", "backbone.weights.h5", "pca.h5"
MODEL_DIR_FILES = {MODEL_JSON, ATTENTION_FILE, BACKBONE_FILE, PCA_FILE, "curves.json", "curves.png"}


def is_model_dir(folder: Path) -> bool:
    return has_format(Path(folder) / MODEL_JSON, (MODEL_FORMAT,))


def read_model_dir(folder: str | Path) -> dict[str, Any]:
    """delf_model.json of a train-delf directory, checked; DelfxError when it is not one."""
    return read_json_artifact(Path(folder) / MODEL_JSON, MODEL_FORMAT, {MODEL_VERSION},
                              what="delfx DELF model directory (train one with `delfx train-delf`)",
                              advice="upgrade delfx or train it again")


def write_model_json(folder: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Write delf_model.json (header first); returns what was written."""
    data = {**summary, **header(MODEL_FORMAT, MODEL_VERSION)}
    atomic_write_json(Path(folder) / MODEL_JSON, data)
    return data


def backbone_weights(folder: Path, info: dict[str, Any]) -> str | None:
    """The backbone weights a directory's model runs with: its fine-tuned block4, else the base."""
    return str(Path(folder) / BACKBONE_FILE) if "block4" in info["trained"] else info["base_weights"]
