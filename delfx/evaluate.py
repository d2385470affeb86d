"""`delfx evaluate`: GAP and accuracy of a Kaggle-form submission against true labels, with a
Markdown + PNG report.

Every query of the truth file counts: a query the submission leaves out is an unanswered query
(it adds nothing to GAP's sum and still counts in its M), exactly as Kaggle scores a missing
row. The coverage (queries answered, submitted, missing) is reported beside GAP, so a
submission that answers few queries can never read as a good one.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
from pathlib import Path
from typing import Any

from delfx.errors import DelfxError
from delfx.metrics import Prediction, accuracy, gap, per_class
from delfx.paths import atomic_text_output


def read_submission(path: Path) -> list[Prediction]:
    """`id,landmarks` rows; landmarks is "label score" (one prediction) or empty (none).

    Raises:
        DelfxError: not UTF-8, no id,landmarks header, a duplicate id (with both lines), a value
            that is not one "label score", a score that is not a finite number >= 0.
    """
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise DelfxError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DelfxError(f"{path}: not UTF-8 text (byte at offset {exc.start}); a submission is "
                         f"a UTF-8 CSV") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        fields = [f.strip() for f in reader.fieldnames or []]
        if not {"id", "landmarks"} <= set(fields):
            raise DelfxError(f"{path}: expected the Kaggle columns id,landmarks, found {fields}")
        reader.fieldnames = fields
        predictions, first_line = [], {}
        for row in reader:
            line = reader.line_num
            query = (row["id"] or "").strip()
            if not query:
                raise DelfxError(f"{path}:{line}: empty id")
            if query in first_line:
                raise DelfxError(f"{path}:{line}: id {query!r} appears twice (first on line "
                                 f"{first_line[query]}): one row per query")
            first_line[query] = line
            predictions.append(_prediction(path, line, query, (row["landmarks"] or "").strip()))
    except csv.Error as exc:
        raise DelfxError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    return predictions


def _prediction(path: Path, line: int, query: str, value: str) -> Prediction:
    if not value:
        return Prediction(query, None, 0.0)
    parts = value.split()
    if len(parts) != 2:
        raise DelfxError(f"{path}:{line}: landmarks {value!r} for {query!r}: expected one "
                         f"'label score' (GAP scores one prediction per query)")
    label, text = parts
    try:
        score = float(text)
    except ValueError:
        raise DelfxError(f"{path}:{line}: score {text!r} for {query!r} is not a number") from None
    if not math.isfinite(score) or score < 0:
        raise DelfxError(f"{path}:{line}: score {text!r} for {query!r}: scores must be finite "
                         f"numbers >= 0 (they rank every prediction of the submission)")
    return Prediction(query, label, score)


def write_submission(path: Path, predictions: list[Prediction]) -> None:
    """The Kaggle form, written atomically (a failed run leaves no half submission)."""
    with atomic_text_output(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "landmarks"])
        for p in predictions:
            writer.writerow([p.query, f"{p.label} {p.score:.6f}" if p.label else ""])


def evaluate(predictions: list[Prediction], truth: dict[str, str | None]) -> dict[str, Any]:
    """GAP, accuracy and coverage over every query of `truth` (see the module docstring)."""
    unknown = [p.query for p in predictions if p.query not in truth]
    if unknown:
        raise DelfxError(f"{len(unknown)} predicted ids are not in the truth file (e.g. "
                         f"{unknown[0]!r}): is it the right one?")
    try:
        value = gap(predictions, truth)
    except ValueError as exc:
        raise DelfxError(f"cannot compute GAP: {exc}") from None
    submitted = {p.query for p in predictions}
    answered = sum(1 for p in predictions if p.label)
    missing = [q for q in truth if q not in submitted]
    coverage = {"queries": len(truth), "submitted": len(submitted), "answered": answered,
                "missing": len(missing), "missing_examples": sorted(missing)[:5],
                "answered_share": answered / len(truth) if truth else 0.0}
    return {"gap": value, **accuracy(predictions, truth), "coverage": coverage,
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
    # each bar labelled with its class's queries: 1 of 1 and 40 of 40 are not the same evidence
    axis.barh([f"{c} (n={v['queries']})" for c, v in classes], [v["accuracy"] for _, v in classes],
              color="#4477aa")
    for y, (_, v) in enumerate(classes):
        axis.text(min(v["accuracy"], 0.82) + 0.01, y, f"{v['correct']}/{v['queries']}",
                  va="center", fontsize=8)
    axis.set_xlim(0, 1)
    axis.set_xlabel("top-1 accuracy (correct / queries of the landmark)")
    axis.set_title(f"GAP {report['gap']:.3f}, top-1 {report['top1']:.3f} over "
                   f"{report['queries']} queries ({report['landmark_queries']} of landmarks)")
    figure.tight_layout()
    figure.savefig(out_dir / "per_class.png", dpi=100)
    lines = [f"# {title}", "",
             f"Generated {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}", "",
             "| metric | value |", "|---|---|",
             f"| GAP | {report['gap']:.4f} |", f"| top-1 accuracy | {report['top1']:.4f} |",
             f"| queries answered / in the truth file | {report['coverage']['answered']} / "
             f"{report['coverage']['queries']} ({report['coverage']['missing']} not in the "
             f"submission) |",
             f"| non-landmark queries left unanswered | {report['non_landmark_rejection']:.4f} |",
             f"| non-landmark queries unanswered or below every right answer | "
             f"{report['non_landmark_harmless']:.4f} |",
             f"| landmark / non-landmark queries | {report['landmark_queries']} / "
             f"{report['non_landmark_queries']} |", "",
             "![per class](per_class.png)", "", "| landmark | queries | correct | accuracy |",
             "|---|---|---|---|"]
    for label, row in sorted(report["per_class"].items()):
        lines.append(f"| {label} | {row['queries']} | {row['correct']} | {row['accuracy']:.2f} |")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
