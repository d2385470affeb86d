"""delfx from Python: the commands' cores, each one call, on the same files the CLI writes.

Every example below runs in the test suite (tests/test_api.py runs this module's doctests in
a temporary folder, `tmp`), on sample data and RootSIFT so that it takes seconds.

Sample data, and a gallery extracted from its labelled training images (in this process;
`ray=True` runs the same job on a local Ray instance, `address=` on a cluster):

>>> import delfx.api as dx
>>> data = dx.sample_data(tmp / "data", landmarks=3, views=3, non_landmarks=2, long_side=240)
>>> summary = dx.extract(data.train_csv, tmp / "gallery", model="rootsift", max_side=240)
>>> summary.images_processed, summary.failed_by_reason
(9, {})

A feature set, opened and read (records by id or position, or all of them in order):

>>> with dx.open_features(tmp / "gallery") as gallery:
...     record = gallery.get("china/view_00")
...     record.locations.shape[1], record.descriptors.shape[1], record.ok
(2, 40, True)

One image, or a list, extracted in memory (nothing written):

>>> [image] = dx.extract_images([data.root / "images/china/view_01.jpg"], model="rootsift",
...                             max_side=240)
>>> image.num_features > 100
True

Two images matched and verified (the transform maps a's pixels (x, y) to b's):

>>> result = dx.match(data.root / "images/china/view_00.jpg",
...                   data.root / "images/china/view_01.jpg", model="rootsift", max_side=240)
>>> result.verification.inliers > 20, result.verification.transform.shape
(True, (3, 3))

An index over the gallery, searched with the query images (extracted with the gallery's own
model and config), best verified gallery image first:

>>> meta = dx.build_index(tmp / "gallery", tmp / "index")
>>> results = dict(dx.search(tmp / "index", tmp / "gallery", data.query_csv))
>>> results["china/view_03"][0].gallery_id.split("/")[0]
'china'

Recognition, written as a Kaggle submission and scored:

>>> summary = dx.recognize(tmp / "gallery", data.train_csv, data.query_csv,
...                        tmp / "submission.csv", mode="retrieval", index=tmp / "index")
>>> summary["queries"] == sum(1 for image in data.images if image.split == "query")
True
>>> report = dx.evaluate(tmp / "submission.csv", data.query_csv)
>>> report["gap"] > 0.9
True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

__all__ = ["sample_data", "extract_config", "extract", "open_features", "extract_images",
           "match", "build_index", "search", "recognize", "evaluate"]


def sample_data(out_dir: Path, **kwargs):
    """`delfx sample-data`: a labelled image set (delfx.sample_data.write_sample_data's
    arguments); the SampleDataSet (root, images, labels_csv, train_csv, query_csv)."""
    from delfx.sample_data import write_sample_data
    return write_sample_data(out_dir, **{"overwrite": True, **kwargs})


def extract_config(preset: str = "delf", config_file: Path | None = None, **settings):
    """The ExtractConfig of a preset, a config file and settings (ExtractConfig's fields, as
    the CLI's options: model, max_side, max_features, ...), resolved as `delfx extract` does."""
    from delfx.config import resolve_extract_config
    return resolve_extract_config(preset, config_file, settings)


def extract(inputs: Path, out_dir: Path, *, shards: int = 1, ray: bool = False,
            address: str | None = None, overwrite: bool = False, preset: str = "delf",
            **settings):
    """`delfx extract`: images (a folder, or a list file with id,path columns) into a feature
    set; resumes what is complete. In this process unless `ray` (or an `address`).
    Returns the run's Summary (images_processed, ok, failed_by_reason, seconds, ...)."""
    from delfx.extractor.executors import InProcessExecutor, RayExecutor
    from delfx.extractor.job import run_extraction
    from delfx.inputs import list_images
    config = extract_config(preset, **settings)
    executor = (RayExecutor(address=address) if ray or address else InProcessExecutor())
    return run_extraction(list_images(Path(inputs)), config, Path(out_dir), shards, executor,
                          overwrite=overwrite, progress=False)


def open_features(root: Path):
    """A feature set (delfx.store.FeatureSet): `get(id or position)`, iteration in order,
    `image_ids`, `manifest`; a context manager that closes its shards."""
    from delfx.store import FeatureSet
    return FeatureSet(Path(root), require_complete=False)


def extract_images(paths: Iterable[Path], *, preset: str = "delf", **settings) -> list:
    """The ImageFeatures of each image (in memory, nothing written), ids = the paths given."""
    from delfx.extractor.models import create_model, resolve_model
    from delfx.extractor.run import extract_items
    from delfx.inputs import ImageItem
    model = create_model(resolve_model(extract_config(preset, **settings)))
    return list(extract_items(model, [ImageItem(str(p), str(p)) for p in paths]))


def match(image_a: Path, image_b: Path, *, ransac: str = "affine", threshold: float | None = None,
          matcher: str = "auto", preset: str = "delf", **settings):
    """`delfx match`: both images extracted, matched and verified; a MatchResult
    (`.matches`, `.verification` with inliers and transform, `.draw(png)`, `.write_hloc(dir)`)."""
    from delfx.index.match import match_images
    return match_images(Path(image_a), Path(image_b), extract_config(preset, **settings),
                        ransac=ransac, threshold=threshold, matcher=matcher)


def build_index(features: Path, out_dir: Path, **kwargs):
    """`delfx build-index` (factory, nprobe, parts=..., overwrite): the index's metadata."""
    parts = kwargs.pop("parts", None)
    if parts:
        from delfx.index.parts import build_index_parts
        return build_index_parts(Path(features), Path(out_dir), parts, **kwargs)
    from delfx.index.faiss_index import build_index as build
    return build(Path(features), Path(out_dir), **kwargs)


def search(index: Path, gallery: Path, queries: Path, **settings
           ) -> Iterator[tuple[str, list]]:
    """`delfx search`: (query id, its verified Results, best first) per query, in order.
    Settings: SearchConfig's fields (k, shortlist, top, ransac, matcher, ...)."""
    from delfx.index.search import run_search
    exclude_self = settings.pop("exclude_self", False)
    return run_search(Path(index), Path(gallery), Path(queries), settings,
                      exclude_self=exclude_self)


def recognize(gallery: Path, labels: Path, queries: Path, out: Path, *, mode: str = "fused",
              index: Path | None = None, classifier: Path | None = None,
              **kwargs) -> dict[str, Any]:
    """`delfx classify`: the queries' landmarks as a Kaggle submission at `out`; its summary.
    Keywords as delfx.recognition.classify.run_classify's (calibrate, min_score, ray, ...)."""
    from delfx.recognition.classify import run_classify
    return run_classify(Path(gallery), Path(labels), Path(queries), Path(out), mode=mode,
                        index_dir=Path(index) if index else None,
                        classifier_dir=Path(classifier) if classifier else None,
                        progress=False, **kwargs)


def evaluate(submission: Path, labels: Path) -> dict[str, Any]:
    """`delfx evaluate`: GAP, top-1 and coverage of a submission against labels."""
    from delfx.evaluate import evaluate as evaluate_predictions, read_submission
    from delfx.labels import read_labels
    return evaluate_predictions(read_submission(Path(submission)), read_labels(Path(labels)))
