"""The on-disk schema of delfx feature shards: the one place that names what is stored where.

A feature set is a folder with `manifest.json` and N shard files `shard-<i>-of-<N>.h5`. Each shard
holds flat, chunked arrays plus a per-image offsets table (never one HDF5 group per image: that
layout slows to a crawl past ~15k images, and reads 100x slower than flat arrays here, see
docs/FORMAT.md). Every name below is part of the schema; changing any of them means a new
schema version and a reader that still understands (or clearly refuses) the old one.

Versions: 1 = local features only. 2 adds an optional per-image global descriptor
(`images/global` and the `global_*` attributes; a shard without one has global_dim 0). 3 adds
what identified each input file (`images/input_size`, `images/input_mtime_ns`, compared on
resume), fletcher32 checksums on every numeric dataset, and the manifest's `descriptor_norm`.
Version 1 and 2 shards and manifests are still read (as having no global descriptor, no input
stamps, no chunk checksums); newer versions are refused.
"""

from __future__ import annotations

FORMAT_NAME = "delfx-features"
SCHEMA_VERSION = 3
SUPPORTED_SCHEMA_VERSIONS = frozenset({1, 2, 3})

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "delfx-manifest"


def shard_file_name(index: int, num_shards: int) -> str:
    """`shard-00003-of-00016.h5`: sorts by index and says how many shards were planned."""
    return f"shard-{index:05d}-of-{num_shards:05d}.h5"


# Per-image table: one row per image, in the order the images were added.
IMAGE_ID = "images/id"            # vlen UTF-8 string, unique within the feature set
IMAGE_OFFSET = "images/offset"    # int64: first row of this image in the features/* arrays
IMAGE_COUNT = "images/count"      # int32: number of feature rows (0 for failed images)
IMAGE_STATUS = "images/status"    # uint8: STATUS_OK or STATUS_FAILED
IMAGE_REASON = "images/reason"    # vlen string: failure code ("" when ok), e.g. "truncated"
IMAGE_MESSAGE = "images/message"  # vlen string: human-readable failure detail ("" when ok)
IMAGE_HEIGHT = "images/height"    # int32: original image height in pixels (after EXIF orientation)
IMAGE_WIDTH = "images/width"      # int32: original image width (0 when the image could not be read)

# v2, only when the shard has global descriptors: (num_images, global_dim) of the descriptor
# dtype, the L2-normalised GeM vector of each image (a zero row for failed images).
IMAGE_GLOBAL = "images/global"

# v3: what identified the input file when it was extracted (-1 when it could not be stat'ed);
# a resume redoes a shard whose inputs no longer match.
IMAGE_INPUT_SIZE = "images/input_size"      # int64: bytes
IMAGE_INPUT_MTIME = "images/input_mtime_ns"  # int64: modification time, ns since the epoch

IMAGE_TABLE = (IMAGE_ID, IMAGE_OFFSET, IMAGE_COUNT, IMAGE_STATUS, IMAGE_REASON, IMAGE_MESSAGE,
               IMAGE_HEIGHT, IMAGE_WIDTH, IMAGE_INPUT_SIZE, IMAGE_INPUT_MTIME)

# Per-feature arrays: one row per keypoint; an image's rows are contiguous and sorted by
# descending score, so "the top K features" of an image is its first min(K, count) rows.
FEATURE_LOCATIONS = "features/locations"      # float32 (M, 2): (y, x) in original-image pixels
FEATURE_SCALES = "features/scales"            # float32 (M,): 1 / pyramid scale (or keypoint scale)
FEATURE_SCORES = "features/scores"            # float32 (M,): attention score (or detector response)
FEATURE_DESCRIPTORS = "features/descriptors"  # float32 or float16 (M, D)

FEATURE_ARRAYS = (FEATURE_LOCATIONS, FEATURE_SCALES, FEATURE_SCORES, FEATURE_DESCRIPTORS)

STATUS_OK = 0
STATUS_FAILED = 1

DESCRIPTOR_DTYPES = ("float32", "float16")

# File attributes (root of every shard). JSON-valued attributes are stored as JSON strings so
# any HDF5 reader can show them and no pickle is ever involved.
ATTR_FORMAT = "format"
ATTR_SCHEMA_VERSION = "schema_version"
ATTR_COMPLETE = "complete"              # set to True as the very last write before the rename
ATTR_MODEL_ID = "model_id"
ATTR_MODEL_HASH = "model_hash"
ATTR_CONFIG = "config_json"             # the full extraction config
ATTR_VERSIONS = "versions_json"         # delfx and library versions
ATTR_CREATED = "created"                # ISO 8601 UTC
ATTR_SHARD_INDEX = "shard_index"
ATTR_NUM_SHARDS = "num_shards"
ATTR_DESCRIPTOR_DIM = "descriptor_dim"
ATTR_DESCRIPTOR_DTYPE = "descriptor_dtype"
ATTR_NUM_IMAGES = "num_images"
ATTR_NUM_FEATURES = "num_features"
# v2: the global model that made images/global (global_dim 0 and empty strings when none).
ATTR_GLOBAL_DIM = "global_dim"
ATTR_GLOBAL_MODEL_ID = "global_model_id"
ATTR_GLOBAL_MODEL_HASH = "global_model_hash"

# Rows per HDF5 chunk of the feature arrays: 4096 x 40 float16 = 320 KiB, large enough that a
# full scan is a few big reads, small enough that a random image costs one chunk.
FEATURE_CHUNK_ROWS = 4096
