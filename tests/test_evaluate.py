"""`delfx evaluate`: every truth query counts, coverage is reported, bad submissions refused."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from delfx.cli import cli
from delfx.errors import DelfxError
from delfx.evaluate import evaluate, read_submission
from delfx.labels import read_labels


@pytest.fixture()
def truth(tmp_path):
    rows = [f"q{i},{'L' + str(i % 6) if i < 24 else ''}" for i in range(32)]  # 24 landmark, 8 not
    (tmp_path / "truth.csv").write_text("id,landmark_id\n" + "\n".join(rows) + "\n")
    return tmp_path / "truth.csv"


def _sub(tmp_path, lines, name="sub.csv", raw=None):
    path = tmp_path / name
    path.write_bytes(raw if raw is not None else ("id,landmarks\n" + "\n".join(lines) + "\n").encode())
    return path


def test_a_one_row_submission_does_not_score_one(tmp_path, truth):
    """The issue: leaving queries out used to drop them from GAP (one right row -> GAP 1.0)."""
    report = evaluate(read_submission(_sub(tmp_path, ["q0,L0 0.9"])), read_labels(truth))
    assert report["gap"] == pytest.approx(1 / 24)
    cov = report["coverage"]
    assert (cov["queries"], cov["submitted"], cov["answered"], cov["missing"]) == (32, 1, 1, 31)


def test_min_score_style_submission_scores_every_truth_query(tmp_path, truth):
    lines = [f"q{i},L{i % 6} {1 - i / 100:.2f}" for i in range(5)] + [f"q{i}," for i in range(5, 32)]
    report = evaluate(read_submission(_sub(tmp_path, lines)), read_labels(truth))
    assert report["gap"] == pytest.approx(5 / 24)
    assert report["coverage"]["answered"] == 5 and report["coverage"]["missing"] == 0


@pytest.mark.parametrize("lines, raw, message", [
    (["q0,L0 0.9", "q0,L1 0.8"], None, "appears twice \\(first on line 2\\)"),
    (["q0,L0 nan"], None, "finite numbers >= 0"),
    (["q0,L0 inf"], None, "finite numbers >= 0"),
    (["q0,L0 -0.5"], None, "finite numbers >= 0"),
    (["q0,a 0.9 b 0.1"], None, "expected one 'label score'"),
    (["q0,L0"], None, "expected one 'label score'"),
    (["q0,L0 high"], None, "is not a number"),
    ([",L0 0.9"], None, "empty id"),
    ([], "id,landmarks\nq0,caf\xe9 0.9\n".encode("latin-1"), "not UTF-8"),
    ([], b"id;landmarks\nq0;L0 0.9\n", "expected the Kaggle columns"),
    ([], b"", "expected the Kaggle columns"),
    (["zz,L0 0.9"], None, "not in the truth file"),
])
def test_bad_submissions_are_refused_with_the_line(tmp_path, truth, lines, raw, message):
    path = _sub(tmp_path, lines, raw=raw)
    with pytest.raises(DelfxError, match=message):
        evaluate(read_submission(path), read_labels(truth))
    result = CliRunner().invoke(cli, ["evaluate", str(path), str(truth)])
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_cli_reports_coverage_and_the_report_says_it(tmp_path, truth):
    result = CliRunner().invoke(cli, ["evaluate", str(_sub(tmp_path, ["q0,L0 0.9", "q24,L0 0.5"])),
                                      str(truth), "--report", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["coverage"]["missing"] == 30 and report["non_landmark_rejection"] == 7 / 8
    assert "queries answered / in the truth file | 2 / 32" in (tmp_path / "report" / "report.md").read_text()


def test_no_landmark_query_means_no_gap(tmp_path):
    (tmp_path / "t.csv").write_text("id,landmark_id\nn1,\nn2,\n")
    with pytest.raises(DelfxError, match="undefined"):
        evaluate(read_submission(_sub(tmp_path, ["n1,L 0.2"])), read_labels(tmp_path / "t.csv"))
