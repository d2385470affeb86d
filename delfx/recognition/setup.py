"""What a classify run loads, once per process: the gallery and its labels, the queries, the
classifier, the global model and index, the local index, the non-landmark images; and the
processor that recognises chunks of queries with them (in `delfx classify`'s own process, or
on each Ray worker of its query job, rebuilt there from the same spec).

A spec is plain data: the paths and settings of the run; a worker's spec adds the driver's
chance model and calibration (fitted once, on the driver, over the labelled gallery), the
digests of the inputs (a worker refuses other copies than the driver's), and the part actors
of an index in parts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from delfx.errors import DelfxError
from delfx.extractor.queries import Queries
from delfx.labels import id_mismatch_hint, read_labels
from delfx.recognition.calibration import Calibration
from delfx.recognition.chance import ChanceModel
from delfx.recognition.recognize import RecognitionConfig, Recognizer
from delfx.store import FeatureSet

log = logging.getLogger(__name__)

# A classifier with fewer training images per class than this is warned about (fused mode lowered
# GAP with 1-3 photos per class).
TRUSTED_IMAGES_PER_CLASS = 5


def warn_untrusted_classifier(classifier, source) -> bool:
    """Warn (and say True) when a classifier's proposals cannot be trusted: trained on too
    few images per class, without validation images, or no better than chance on them."""
    info = getattr(classifier, "info", {}) or {}
    data, training = info.get("data", {}), info.get("training", {})
    classes = int(info.get("num_classes") or len(getattr(classifier, "labels", [])) or 0)
    train_images = int(data.get("train_images") or 0)
    accuracy = training.get("val_accuracy")
    reasons = []
    if classes and train_images < TRUSTED_IMAGES_PER_CLASS * classes:
        reasons.append(f"{train_images} training images for {classes} classes "
                       f"(< {TRUSTED_IMAGES_PER_CLASS} per class)")
    if accuracy is None:
        reasons.append("no validation images, so its accuracy is unknown")
    elif classes and accuracy <= 2.0 / classes:
        reasons.append(f"validation accuracy {accuracy:.3f}, about chance (1/{classes})")
    if reasons:
        log.warning("classifier %s: %s: its proposals may lower GAP; consider --mode retrieval",
                    source, "; ".join(reasons))
    return bool(reasons)


def gallery_labels_of(gallery: FeatureSet, labels: dict[str, str | None], source) -> dict:
    """The labels of the gallery's images. Refuses labels that match no gallery image; warns,
    with counts, about labelled ids the gallery lacks and gallery images without a label."""
    in_gallery = set(gallery.image_ids)
    kept = {i: label for i, label in labels.items() if i in in_gallery}
    if not any(kept.values()):
        example = next(iter(labels), None)
        there = gallery.image_ids[0] if gallery.image_ids else None
        raise DelfxError(f"{source}: no landmark label is for an image of the gallery "
                         f"{gallery.root} ({len(labels)} labelled ids, e.g. {example!r}; gallery "
                         f"ids look like {there!r}): are they the same ids?"
                         f"{id_mismatch_hint(labels, gallery.image_ids)}")
    if len(kept) < len(labels):
        log.warning("%d of %d labelled ids are not in the gallery %s: ignored", len(labels) -
                    len(kept), len(labels), gallery.root)
    unlabelled = len(in_gallery) - len(kept)
    if unlabelled:
        log.warning("%d of %d gallery images have no row in %s: they never vote for a landmark",
                    unlabelled, len(in_gallery), source)
    return kept


def _path(value) -> Path | None:
    return Path(value) if value is not None else None


class RecognitionSetup:
    """Everything a mode needs, loaded and checked (see the module's docstring).

    Args:
        spec: "gallery", "labels", "queries", "mode", "classifier", "index", "global_model",
            "non_landmarks" (paths or None), "top_k", "min_score", "shortlist",
            "search_settings", "scoring".
        ray: Ray settings for an index in parts (one actor per part); `searchers`: the part
            actors to share instead (a worker's).
        worker: on a query job's worker: the queries come chunk by chunk (not listed).
    """

    def __init__(self, spec: dict[str, Any], *, ray: dict[str, Any] | None = None,
                 searchers: list | None = None, worker: bool = False):
        from delfx.index.faiss_index import check_compatible
        from delfx.index.search import SearchConfig
        mode = spec["mode"]
        self.spec, self.mode = spec, mode
        classifier_dir, index_dir = _path(spec["classifier"]), _path(spec["index"])
        global_model_dir = _path(spec["global_model"])
        self.gallery = gallery = FeatureSet(Path(spec["gallery"]), require_complete=False)
        self.labels = gallery_labels_of(gallery, read_labels(Path(spec["labels"])),
                                        spec["labels"])
        # cheap checks before any model is loaded
        self.query_set = Queries(Path(spec["queries"]), gallery, list_images=not worker)
        self.classifier = self.index = self.global_index = self.global_model = None
        if global_model_dir is not None:
            from delfx.globalnet.model import load_global_model
            self.global_model = load_global_model(global_model_dir)
        if mode in ("classifier", "fused"):
            if classifier_dir is None:
                raise DelfxError(f"--mode {mode} needs --classifier (from `delfx train`)")
            from delfx.globalnet.model import is_global_model_dir, load_global_model
            if is_global_model_dir(classifier_dir):
                self.classifier = self.global_model = load_global_model(classifier_dir)
            else:
                from delfx.classifier.model import load_classifier
                self.classifier = load_classifier(classifier_dir)
                self.classifier.check_features(gallery.manifest)
            if not worker:
                warn_untrusted_classifier(self.classifier, classifier_dir)
        if mode == "shortlist":
            from delfx.index.global_index import GlobalIndex
            self.global_index = (GlobalIndex.load(index_dir) if index_dir is not None and
                                 GlobalIndex.exists(index_dir)
                                 else GlobalIndex.from_feature_set(gallery))
            if self.global_model is not None:
                self.global_index.check_query_model(self.global_model.describe(),
                                                    str(global_model_dir))
        if mode in ("retrieval", "fused"):
            if index_dir is None:
                raise DelfxError(f"--mode {mode} needs --index (from `delfx build-index`)")
            from delfx.index.faiss_index import is_parts_dir
            from delfx.index.parts import open_index
            # a single index (memory-mapped on a worker: a machine's workers share it), or one
            # in parts (with `ray`, one actor per part)
            self.index = open_index(index_dir, ray=ray if is_parts_dir(index_dir) else None,
                                    searchers=searchers, mmap=worker)
            check_compatible(self.index.meta, gallery, index_dir)
        self.search = SearchConfig.for_model(gallery.manifest.model_id,
                                             **{"shortlist": spec["shortlist"],
                                                **(spec["search_settings"] or {})})
        self.config = RecognitionConfig(
            mode=mode, top_k=spec["top_k"], min_score=spec["min_score"], search=self.search,
            shortlist=spec["shortlist"],
            **{k: v for k, v in (spec["scoring"] or {}).items() if v is not None})
        self.non_landmarks = None
        if spec["non_landmarks"] is not None:
            if mode == "classifier":
                raise DelfxError("--non-landmarks needs verification: --mode retrieval, fused "
                                 "or shortlist")
            from delfx.recognition.non_landmarks import NonLandmarks
            self.non_landmarks = NonLandmarks(Path(spec["non_landmarks"]), gallery)

    def recognizer(self, *, chance: ChanceModel | None = None,
                   calibration: Calibration | None = None, memo=None) -> Recognizer:
        return Recognizer(self.gallery, self.labels, index=self.index,
                          classifier=self.classifier, config=self.config,
                          global_index=self.global_index, chance=chance,
                          calibration=calibration, memo=memo, non_landmarks=self.non_landmarks)

    def close(self) -> None:
        getattr(self.index, "close", lambda: None)()  # an index in parts on Ray: its actors
        self.gallery.close()


class ClassifyProcessor:
    """Recognises chunks of queries (each row a Recognition.to_json())."""

    def __init__(self, recognizer: Recognizer, queries: Queries, global_model,
                 exclude_self: bool):
        self.recognizer, self.queries = recognizer, queries
        self.global_model, self.exclude_self = global_model, exclude_self

    def describe(self) -> dict[str, Any]:
        return {"mode": self.recognizer.config.mode}

    def process(self, chunk: list[tuple[str, str | None]]) -> list[dict]:
        records = self.queries.records_of(chunk, self.global_model)
        return [self.recognizer.recognize(q, exclude_self=self.exclude_self).to_json()
                for q in records]


def make_processor(spec: dict[str, Any], threads: int | None = None) -> ClassifyProcessor:
    """A worker's processor: the setup rebuilt from the driver's spec, checked against the
    driver's digests, with the driver's chance model and calibration."""
    import dataclasses

    from delfx.index.search_job import check_digest, index_digest
    from delfx.digests import file_sha256
    from delfx.store.schema import MANIFEST_NAME
    digests = spec["digests"]
    check_digest(Path(spec["gallery"]) / MANIFEST_NAME, digests["gallery"], file_sha256)
    check_digest(Path(spec["labels"]), digests["labels"], file_sha256)
    if spec["index"] is not None:
        check_digest(Path(spec["index"]), digests["index"], index_digest)
    setup = RecognitionSetup(spec, searchers=spec.get("searchers"), worker=True)
    if threads:
        setup.config = dataclasses.replace(
            setup.config, search=dataclasses.replace(setup.config.search, workers=threads))
    chance = ChanceModel.from_json(spec["chance"]) if spec["chance"] else None
    calibration = Calibration.from_json(spec["calibration"]) if spec["calibration"] else None
    # no memo: within one query no pair comes twice (the driver's memo serves its calibration)
    recognizer = setup.recognizer(chance=chance, calibration=calibration)
    return ClassifyProcessor(recognizer, setup.query_set, setup.global_model,
                             spec["exclude_self"])
