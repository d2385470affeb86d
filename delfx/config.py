"""Extraction configuration (a dataclass, named presets, one fixed override order), and the
names the command line offers for models, presets and the other choices.

Order (later wins): preset < config file (TOML or JSON) < environment (DELFX_*) < command line.
Click reads DELFX_* for every option, so the CLI hands environment and command-line values
together as `overrides`; `resolve_extract_config` applies them over the file over the preset.
The resolved config is recorded in every artifact (shard attributes, manifest).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from delfx.errors import DelfxError

# Names a user can type, listed once: the CLI offers them and the modules that implement them
# import them from here (this module is cheap to import, so `delfx --help` stays instant).
MODEL_NAMES = ("auto", "tfhub", "delf-vgg16", "delf-resnet50", "rootsift", "delf-hybrid",
               "xfeat", "aliked", "disk")
# Learned models (PyTorch, the `torch` extra): their own descriptors unless given a PCA.
LEARNED_MODEL_NAMES = ("xfeat", "aliked", "disk")
RANSAC_MODELS = ("affine", "homography", "similarity")
# IVF lists a local-descriptor index searches per query (build-index --nprobe). On real
# descriptors (benchmarks/eval_index_real.py) GAP through search was flat from nprobe 8 up;
# 32 buys recall@1 ~0.9 (IVF-SQ8) at ~15% of a query's time, so other data keep a margin.
DEFAULT_NPROBE = 32
MATCHERS = ("auto", "mnn", "lightglue")  # auto: lightglue where the features have one
GLOBAL_MODEL_NAMES = ("gem-vgg16", "gem-resnet50", "concat")
TRAIN_MODEL_NAMES = ("delf-bottleneck",) + GLOBAL_MODEL_NAMES
CLASSIFIER_HEADS = ("pool", "flatten")
PRECISIONS = ("float32", "bfloat16", "int8")
# the models whose network int8 can run (LiteRT; the others have none, or not a TF one)
INT8_MODELS = ("delf-vgg16", "delf-resnet50", "delf-hybrid")
CLASSIFY_MODES = ("fused", "classifier", "retrieval", "shortlist")
# The key under which the recorded config (manifest, shards) keeps the model's own view of it.
MODEL_OUTPUT_KEY = "model_output_config"

# The image pyramid of the DELF paper and the official TF-Hub module.
DELF_SCALES = (0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0)
# Equal to Pillow's default MAX_IMAGE_PIXELS (2**30 // 4 // 3), so that at the default Pillow's
# warning threshold and ours coincide; about 270 MB as a uint8 RGB array.
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that decides what features an image gets.

    Attributes:
        model: one of MODEL_NAMES (`auto`, `tfhub`, `delf-vgg16`, `delf-resnet50`, `rootsift`,
            `delf-hybrid`).
        model_path: TF-Hub handle or SavedModel folder (tfhub), weights file (delf-resnet50);
            None for the built-in default.
        pca_path: PCA file (`delfx fit-pca`) replacing the one shipped with the model.
        image_size: resize every image to this square size first (the seed128 recipe);
            locations are still reported in original-image pixels.
        max_side: otherwise, downscale so the long side is at most this (None: never).
        scales: image pyramid scales (DELF).
        score_threshold: keep features whose score is >= this (attention, DELF).
        max_features: keep at most this many features per image (top by score, all scales).
        descriptor_dim: output dimension after PCA (40 for DELF); 0 keeps the raw dimension.
            The learned models (LEARNED_MODEL_NAMES) keep their own descriptors unless a PCA
            is given (pca_path): the default 40 then means their native dimension.
        descriptor_dtype: storage dtype, float16 halves the shards at no measurable loss.
        batch_size: images per forward pass (only when all images share one size: image_size).
        max_pixels: decompression-bomb guard, in pixels of the decoded image.
        min_side: images whose short side is smaller are recorded as too small.
        precision: `float32`, `bfloat16` (mixed precision; faster on CPUs with AVX-512 BF16) or
            `int8` (the built-in networks through LiteRT with int8 weights, checked against
            float32 before use: delfx/extractor/lite.py).
    """

    model: str = "auto"
    model_path: str | None = None
    pca_path: str | None = None
    image_size: int | None = None
    max_side: int | None = 1024
    scales: tuple[float, ...] = DELF_SCALES
    score_threshold: float = 100.0
    max_features: int = 1000
    descriptor_dim: int = 40
    descriptor_dtype: str = "float16"
    batch_size: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = 16
    precision: str = "float32"
    preset: str = field(default="delf", compare=True)

    def __post_init__(self) -> None:
        self._check_types()
        if self.image_size is not None and self.image_size < 16:
            raise DelfxError(f"image_size must be >= 16, got {self.image_size}")
        if self.max_side is not None and self.max_side < 16:
            raise DelfxError(f"max_side must be >= 16, got {self.max_side}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise DelfxError(f"scales must be positive, got {self.scales}")
        if self.max_features < 1:
            raise DelfxError(f"max_features must be >= 1, got {self.max_features}")
        if self.descriptor_dtype not in ("float16", "float32"):
            raise DelfxError(f"descriptor_dtype must be float16 or float32, got {self.descriptor_dtype}")
        if self.precision not in PRECISIONS:
            raise DelfxError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                             f"{self.precision}")
        if self.batch_size < 1:
            raise DelfxError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batch_size > 1 and self.image_size is None:
            raise DelfxError("batch_size > 1 needs image_size (images of one shape), "
                             "e.g. the seed128 preset")
        if self.descriptor_dim < 0:
            raise DelfxError(f"descriptor_dim must be >= 0 (0 keeps the raw dimension), got "
                             f"{self.descriptor_dim}")
        if self.max_pixels < 1 or self.min_side < 1:
            raise DelfxError(f"max_pixels and min_side must be >= 1, got {self.max_pixels}, "
                             f"{self.min_side}")
        if not math.isfinite(self.score_threshold):
            raise DelfxError(f"score_threshold must be a finite number, got {self.score_threshold}")
        if self.model not in MODEL_NAMES:
            raise DelfxError(f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}")

    def _check_types(self) -> None:
        """Every field of the type it must have (a config file can say anything)."""
        integer = ("max_features", "descriptor_dim", "batch_size", "max_pixels", "min_side")
        optional_integer = ("image_size", "max_side")
        text = ("model", "descriptor_dtype", "precision", "preset")
        optional_text = ("model_path", "pca_path")
        for name in integer + optional_integer:
            value = getattr(self, name)
            if value is None and name in optional_integer:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise DelfxError(f"config {name} must be an integer, got {value!r}")
        for name in text + optional_text:
            value = getattr(self, name)
            if not (isinstance(value, str) or (value is None and name in optional_text)):
                raise DelfxError(f"config {name} must be a string, got {value!r}")
        value = self.score_threshold
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DelfxError(f"config score_threshold must be a number, got {value!r}")
        if not isinstance(self.scales, tuple) or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)
                for s in self.scales):
            raise DelfxError(f"config scales must be a list of finite numbers, got {self.scales!r}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["scales"] = list(self.scales)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExtractConfig":
        """The config from plain values (a config file, a recorded config); fields left out
        take their defaults, unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise DelfxError(f"unknown config keys: {sorted(unknown)}; known: {sorted(known)}")
        values = dict(data)
        if "scales" in values:
            try:
                values["scales"] = tuple(float(s) for s in values["scales"])
            except (TypeError, ValueError):
                raise DelfxError(f"scales must be a list of numbers, got {values['scales']!r}") from None
        return cls(**values)

    def to_recorded(self, model_output_config: Mapping[str, Any]) -> dict[str, Any]:
        """What shards and manifest record: the full resolved config (enough to rebuild the model
        for queries) and the model's own view of the fields that shape its output."""
        return {**self.to_dict(), MODEL_OUTPUT_KEY: dict(model_output_config)}

    @classmethod
    def from_recorded(cls, recorded: Mapping[str, Any]) -> "ExtractConfig":
        """The config a feature set records (`to_recorded`), back as a config."""
        return cls.from_dict({k: v for k, v in recorded.items() if k != MODEL_OUTPUT_KEY})

    def replace(self, **changes: Any) -> "ExtractConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ExtractConfig] = {
    # The reference recipe: every image squashed to 128x128, 7 scales; one shape for all images,
    # so many images share each forward pass. About 150 features per image come out.
    "seed128": ExtractConfig(preset="seed128", image_size=128, max_side=None, batch_size=32),
    # DELF as published: long side <= 1024, 7 scales, one image per forward pass.
    "delf": ExtractConfig(preset="delf", max_side=1024),
    # CPU-friendly: long side <= 512 and the 4 middle-to-large scales (the 0.25-0.35 levels of a
    # 512 image are too coarse to add matchable features; 2.0 costs 4x the 1.0 level).
    "fast": ExtractConfig(preset="fast", max_side=512, scales=(0.5, 0.7071, 1.0, 1.4142),
                          max_features=500),
}
PRESET_NAMES = tuple(PRESETS)


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML or JSON config file ([extract] table or top level) into a plain dict."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError:
        raise DelfxError(f"config file not found: {path}") from None
    except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
        raise DelfxError(f"cannot read config file {path}: {exc}") from None
    return dict(data.get("extract", data))


def resolve_extract_config(preset: str = "delf", config_file: Path | None = None,
                           overrides: Mapping[str, Any] | None = None) -> ExtractConfig:
    """Preset < config file < overrides (environment and command line, None = not given)."""
    if preset not in PRESETS:
        raise DelfxError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = PRESETS[preset].to_dict()
    layers = [load_config_file(config_file) if config_file else {},
              {k: v for k, v in (overrides or {}).items() if v is not None}]
    for layer in layers:
        unknown = set(layer) - set(values)
        if unknown:
            raise DelfxError(f"unknown config keys: {sorted(unknown)}; known: {sorted(values)}")
        values.update(layer)
    values["preset"] = preset
    return ExtractConfig.from_dict(values)
