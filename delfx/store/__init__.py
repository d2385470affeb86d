"""The feature store: sharded HDF5 files (schema v2) plus a manifest. See docs/FORMAT.md.

Import what you need from here; `schema` is the one module that names the on-disk layout.
"""

from delfx.store.check import VerifyReport, inspect, require_intact, verify
from delfx.store.featureset import FeatureSet
from delfx.store.manifest import Manifest
from delfx.store.records import ImageFeatures
from delfx.store.schema import SCHEMA_VERSION, shard_file_name
from delfx.store.manifest import ShardInfo
from delfx.store.reader import ShardReader
from delfx.store.writer import ShardWriter

__all__ = ["FeatureSet", "ImageFeatures", "Manifest", "SCHEMA_VERSION", "ShardInfo", "ShardReader",
           "ShardWriter", "VerifyReport", "inspect", "require_intact", "shard_file_name", "verify"]
