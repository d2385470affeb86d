"""Commands of recognition: train, classify, evaluate."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path

import click

from delfx.commands.options import (FINITE, POSITIVE, RATE, data_only_stdout, job_options,
                                   job_ray)
from delfx.config import (CLASSIFIER_HEADS, CLASSIFY_MODES, MATCHERS, RANSAC_MODELS,
                          TRAIN_MODEL_NAMES)
from delfx.recognition.chance import DEFAULT_PAIRS as DEFAULT_CHANCE_PAIRS  # numpy only


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.argument("labels_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "model_name", type=click.Choice(TRAIN_MODEL_NAMES), default="delf-bottleneck",
              help="delf-bottleneck: head over local features (INPUT = a feature set); gem-*, "
                   "concat: GeM global models trained on images (INPUT = image folder or list).")
@click.option("--head", type=click.Choice(CLASSIFIER_HEADS), default=None,
              help="delf-bottleneck: pool (order-invariant, default) or flatten (the reference 150 x D).")
@click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="ResNet50 .weights.h5 (gem-resnet50, concat).")
@click.option("--image-size", type=int, default=None, help="GeM models: images squashed to this square.")
@click.option("--crop-size", type=int, default=None, help="GeM models: random training crop side.")
@click.option("--per-channel-p", is_flag=True, help="GeM models: one learnt p per channel.")
@click.option("--fine-tune", is_flag=True, help="GeM models: train the backbone too (slow on CPU).")
@click.option("--units", type=int, default=None)
@click.option("--blocks", type=int, default=None, help="Dense -> BatchNorm -> activation -> Dropout blocks.")
@click.option("--activation", default=None)
@click.option("--dropout", type=float, default=None)
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--learning-rate", type=float, default=None)
@click.option("--min-samples", type=int, default=None, help="Drop classes with fewer images.")
@click.option("--validation-share", type=float, default=None)
@click.option("--no-class-weighting", is_flag=True)
@click.option("--seed", type=int, default=None)
@click.option("--overwrite", is_flag=True)
def train(input_path: Path, labels_csv: Path, out_dir: Path, model_name: str, overwrite: bool,
          no_class_weighting: bool, per_channel_p: bool, fine_tune: bool, **options) -> None:
    """Train a landmark classifier on INPUT with LABELS_CSV (id,landmark_id).

    INPUT is a feature set (`delfx extract`) for delf-bottleneck, images (a folder, or a list
    file with id,path columns) for the GeM models.
    """
    changes = {k: v for k, v in options.items() if v is not None}
    if no_class_weighting:
        changes["class_weighting"] = False
    if model_name == "delf-bottleneck":
        from delfx.classifier.model import ClassifierConfig
        from delfx.classifier.train import train_classifier
        given = [n for n in ("backbone_weights", "image_size", "crop_size") if n in changes]
        given += [n for n, flag in (("per_channel_p", per_channel_p), ("fine_tune", fine_tune))
                  if flag]
        if given:
            raise click.UsageError(f"--{given[0].replace('_', '-')} is for the GeM models")
        result = train_classifier(input_path, labels_csv, out_dir,
                                  ClassifierConfig().replace(**changes), overwrite=overwrite)
    else:
        from delfx.globalnet.model import GlobalConfig
        from delfx.globalnet.train import train_global_model
        if "head" in changes:
            raise click.UsageError("--head is for delf-bottleneck")
        config = GlobalConfig(model=model_name, **changes, per_channel_p=per_channel_p,
                              fine_tune=fine_tune)
        result = train_global_model(input_path, labels_csv, out_dir, config, overwrite=overwrite)
    click.echo(jsonlib.dumps({"out_dir": str(result.out_dir), "model": model_name,
                              "classes": result.num_classes,
                              "train_images": result.train_images,
                              "validation_images": result.validation_images,
                              "val_accuracy": result.val_accuracy, "best_epoch": result.best_epoch,
                              "train_samples_per_s": round(result.train_samples_per_s, 1),
                              "inference_samples_per_s": round(result.inference_samples_per_s, 1)}))


@click.command()
@click.argument("gallery_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("gallery_labels", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("queries", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Kaggle submission CSV (id,landmarks).")
@click.option("--mode", type=click.Choice(CLASSIFY_MODES),
              default="fused", help="shortlist: nearest gallery images by global descriptor, "
              "verified with local features (needs a gallery extracted with --global-model).")
@click.option("--classifier", "classifier_dir", type=click.Path(exists=True, file_okay=False,
              path_type=Path), help="From `delfx train`, any --model (classifier and fused modes).")
@click.option("--global-model", "global_model_dir", type=click.Path(exists=True, file_okay=False,
              path_type=Path), help="GeM model that embeds query images (shortlist mode; the "
              "gallery's global model).")
@click.option("--shortlist", type=POSITIVE, default=30, help="Gallery images verified per query "
              "(most-voted in retrieval and fused modes; nearest by global descriptor in "
              "shortlist mode).")
@click.option("--index", "index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="From `delfx build-index` on GALLERY_DIR (retrieval and fused modes).")
@click.option("--calibration", type=click.Path(dir_okay=False, path_type=Path),
              help="Calibration JSON to use; with --calibrate, where to write it.")
@click.option("--calibrate", is_flag=True, help="Fit the calibration first: leave-one-out over "
              "the labelled gallery (the classifier's validation images in classifier/fused mode).")
@click.option("--evidence", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON lines with each query's candidates and evidence.")
@click.option("--min-score", type=FINITE, default=None, help="No prediction below this score "
              "(e.g. 1 with raw scores: none below chance and the non-landmark gallery images) "
              "[none: every query with evidence is answered, weak answers ranked last, which "
              "GAP never punishes].")
@click.option("--top-k", type=POSITIVE, default=3, help="Classifier proposals verified (fused).")
@click.option("--matcher", type=click.Choice(MATCHERS), default="auto",
              help="Putative matches: mnn (mutual nearest neighbours) or lightglue (a learned "
              "model's own) [auto: lightglue where the features have one, else mnn].")
@click.option("--k", type=POSITIVE, default=None, help="Nearest gallery keypoints per query "
              "descriptor (votes) [10].")
@click.option("--max-distance", type=click.FloatRange(0), default=None,
              help="L2 distance under which a neighbour votes [1.0].")
@click.option("--ransac", type=click.Choice(RANSAC_MODELS), default=None, help="[affine]")
@click.option("--threshold", type=RATE, default=None,
              help="RANSAC residual, share of the image diagonal [the features' default].")
@click.option("--aggregate", type=POSITIVE, default=None, help="A landmark's evidence: sum over "
              "its N best verified gallery images [1].")
@click.option("--scoring", type=click.Choice(["inliers", "delg"]), default=None,
              help="inliers: evidence from inliers (above chance); delg: DELG's cosine + "
              "min(inliers, 70)/70, top-10 re-ranked, top-5 vote (--mode shortlist) [inliers].")
@click.option("--rank-by", type=click.Choice(["evidence", "inliers"]), default=None,
              help="Answers at or above chance (and the non-landmark images) ranked by their "
              "evidence above chance, or by raw inliers; those below chance come after either "
              "way [evidence].")
@click.option("--per-class", type=POSITIVE, default=None,
              help="Gallery images verified per classifier proposal (fused) [5].")
@click.option("--chance-pairs", type=click.IntRange(0), default=0,
              help=f"Negative gallery pairs verified to learn how many inliers unrelated images "
              f"reach (e.g. {DEFAULT_CHANCE_PAIRS}); evidence then counts inliers above that, "
              f"and --min-score 1 leaves answers below chance unanswered [0: raw inliers].")
@click.option("--no-non-landmark-penalty", is_flag=True, help="Do not subtract the evidence of "
              "non-landmark gallery images (empty landmark in GALLERY_LABELS).")
@click.option("--max-per-landmark", type=click.IntRange(0), default=0, help="Demote a landmark's "
              "answers beyond its N best of this batch (0: off).")
@click.option("--exclude-self", is_flag=True, help="A query never matches the gallery image with "
              "its own id: leave-one-out with QUERIES = GALLERY_DIR.")
@click.option("--non-landmarks", type=click.Path(exists=True, path_type=Path), default=None,
              help="Images known not to be landmarks (a feature set of the gallery's model, or "
              "images): evidence against a landmark, like the gallery's own non-landmark "
              "images (an empty landmark in GALLERY_LABELS).")
@job_options
def classify(gallery_dir: Path, gallery_labels: Path, queries: Path, out: Path, mode: str,
             classifier_dir: Path | None, index_dir: Path | None, calibration: Path | None,
             calibrate: bool, evidence: Path | None, min_score: float | None, top_k: int,
             global_model_dir: Path | None, shortlist: int, matcher: str, k: int | None,
             max_distance: float | None, ransac: str | None, threshold: float | None,
             aggregate: int | None, per_class: int | None, scoring: str | None,
             rank_by: str | None,
             chance_pairs: int,
             no_non_landmark_penalty: bool, max_per_landmark: int, exclude_self: bool,
             non_landmarks: Path | None, on_ray: bool, address: str | None,
             workers: int | None, chunk_size: int | None) -> None:
    """Recognise the landmark of QUERIES (a feature set, or images extracted on the fly).

    A resumable job: a killed or interrupted run, run again with the same arguments, finishes
    the chunks of queries not done yet (kept in .OUT.delfx-job/ beside OUT).
    """
    from delfx.recognition.classify import run_classify
    ray = job_ray(on_ray, address, workers, out, needs_out=False)
    with data_only_stdout():
        summary = run_classify(gallery_dir, gallery_labels, queries, out, mode=mode,
                               classifier_dir=classifier_dir, index_dir=index_dir,
                               calibration_path=calibration, calibrate=calibrate,
                               evidence_path=evidence, min_score=min_score, top_k=top_k,
                               shortlist=shortlist, global_model_dir=global_model_dir,
                               search_settings={"matcher": matcher, "k": k, "ransac": ransac,
                                                "max_distance": max_distance,
                                                "relative_threshold": threshold},
                               scoring={"aggregate": aggregate, "per_class": per_class,
                                        "scoring": scoring, "rank_by": rank_by,
                                        "non_landmark_penalty": False if no_non_landmark_penalty
                                        else None},
                               chance_pairs=chance_pairs, max_per_landmark=max_per_landmark,
                               exclude_self=exclude_self, non_landmarks=non_landmarks,
                               ray=ray, workers=workers, chunk_size=chunk_size)
    click.echo(jsonlib.dumps(summary))


@click.command()
@click.argument("submission", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("labels_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write report.md, report.json and per_class.png here.")
def evaluate(submission: Path, labels_csv: Path, report_dir: Path | None) -> None:
    """GAP and top-1 accuracy of a Kaggle-form SUBMISSION against LABELS_CSV (id,landmark_id)."""
    from delfx.evaluate import evaluate as evaluate_predictions, read_submission, write_report
    from delfx.labels import read_labels
    report = evaluate_predictions(read_submission(submission), read_labels(labels_csv))
    if report_dir is not None:
        write_report(report, report_dir, title=f"delfx evaluation of {submission.name}")
    click.echo(jsonlib.dumps({k: v for k, v in report.items() if k != "per_class"}))
