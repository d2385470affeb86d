"""`delfx evaluate`: GAP and accuracy of a Kaggle-form submission against true labels, with a
Markdown + PNG report."""

from __future__ import annotations

import csv
import datetime as _dt
import json
from pathlib import Path
from typing import Any

from delfx.errors import DelfxError
from delfx.metrics import Prediction, accuracy, gap, per_class


def read_submission(path: Path) -> list[Prediction]:
    """`id,landmarks` rows; landmarks is "label score" or empty (no prediction)."""
    predictions = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"id", "landmarks"} <= set(reader.fieldnames):
            raise DelfxError(f"{path}: expected the Kaggle columns id,landmarks")
        for row in reader:
            value = (row["landmarks"] or "").strip()
            if not value:
                predictions.append(Prediction(row["id"], None, 0.0))
                continue
            label, _, score = value.rpartition(" ")
            try:
                predictions.append(Prediction(row["id"], label, float(score)))
            except ValueError:
                raise DelfxError(f"{path}: bad landmarks value {value!r} for {row['id']} "
                                 f"(expected 'label score')") from None
    return predictions


def write_submission(path: Path, predictions: list[Prediction]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "landmarks"])
        for p in predictions:
            writer.writerow([p.query, f"{p.label} {p.score:.6f}" if p.label else ""])


def evaluate(predictions: list[Prediction], truth: dict[str, str | None]) -> dict[str, Any]:
    missing = [p.query for p in predictions if p.query not in truth]
    if missing:
        raise DelfxError(f"{len(missing)} predicted ids have no true label (e.g. {missing[0]!r})")
    covered = {p.query for p in predictions}
    truth = {q: label for q, label in truth.items() if q in covered}
    try:
        value = gap(predictions, truth)
    except ValueError as exc:
        raise DelfxError(f"cannot compute GAP: {exc}") from None
    return {"gap": value, **accuracy(predictions, truth),
            "per_class": per_class(predictions, truth), "queries": len(truth)}


def write_report(report: dict[str, Any], out_dir: Path, title: str = "delfx evaluation") -> Path:
    """report.md, report.json and per_class.png in out_dir; returns the Markdown path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    classes = sorted(report["per_class"].items(), key=lambda kv: (kv[1]["accuracy"], kv[0]))
    # The Agg canvas directly, not pyplot: no global backend switched, no display needed.
    figure = Figure(figsize=(8, max(2.5, 0.25 * len(classes) + 1)))
    FigureCanvasAgg(figure)
    axis = figure.add_subplot(1, 1, 1)
    axis.barh([c for c, _ in classes], [v["accuracy"] for _, v in classes], color="#4477aa")
    axis.set_xlim(0, 1)
    axis.set_xlabel("top-1 accuracy")
    axis.set_title(f"GAP {report['gap']:.3f}, top-1 {report['top1']:.3f}")
    figure.tight_layout()
    figure.savefig(out_dir / "per_class.png", dpi=100)
    lines = [f"# {title}", "",
             f"Generated {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}", "",
             "| metric | value |", "|---|---|",
             f"| GAP | {report['gap']:.4f} |", f"| top-1 accuracy | {report['top1']:.4f} |",
             f"| non-landmark queries left unanswered | {report['non_landmark_rejection']:.4f} |",
             f"| landmark / non-landmark queries | {report['landmark_queries']} / "
             f"{report['non_landmark_queries']} |", "",
             "![per class](per_class.png)", "", "| landmark | queries | correct | accuracy |",
             "|---|---|---|---|"]
    for label, row in sorted(report["per_class"].items()):
        lines.append(f"| {label} | {row['queries']} | {row['correct']} | {row['accuracy']:.2f} |")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
