"""The benchmark suite's entry point, runner and report (real stages, real files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from benchmarks import report, suite

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run_bench(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_quick_suite_writes_json_markdown_and_plots(tmp_path):
    out = tmp_path / "results"
    md = tmp_path / "docs" / "benchmarks.md"
    empty = tmp_path / "no-shared"
    empty.mkdir()
    proc = _run_bench(["--quick", "--stages", "verify,scaling,recognition", "--out", str(out),
                       "--markdown", str(md)], env={"DELFX_SHARED_DATA": str(empty)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads((out / "suite.json").read_text())
    assert status["mode"] == "quick"
    assert {k: v["status"] for k, v in status["stages"].items()} == {
        "verify": "ok", "scaling": "ok", "recognition": "skipped"}
    assert status["stages"]["scaling"]["peak_rss_bytes"] > 10 * 2**20
    assert status["machine"]["cores"] == os.cpu_count()
    # Each stage's JSON carries its figures, the table it printed and the machine facts.
    scaling = json.loads((out / "scaling.json").read_text())
    assert scaling["table"] and scaling["machine"]["versions"]["delfx"]
    points = scaling["models"][0]["points"]
    assert [p["images"] for p in points] == [16, 32, 64] and all(p["ok"] == p["images"] for p in points)
    # Tables reach stdout (data); progress goes to stderr.
    assert "## Geometric verification" in proc.stdout and "[bench] verify" in proc.stderr
    text = (out / "report.md").read_text()
    assert "## Side by side" in text and "scikit-image RANSAC" in text
    assert "R^2" in text and "Problems" not in text
    assert "**skipped**" in text
    assert (out / "scaling.png").read_bytes()[:8] == PNG_MAGIC
    # The --markdown copy points at its own copies of the plots and keeps the JSON beside it.
    copy = md.read_text()
    assert "](benchmarks-plots/scaling.png)" in copy
    assert (md.parent / "benchmarks-plots" / "scaling.png").read_bytes()[:8] == PNG_MAGIC
    assert (md.parent / "benchmarks-results" / "verify.json").is_file()


def test_rerunning_one_stage_keeps_the_others(tmp_path):
    out = tmp_path / "results"
    assert _run_bench(["--quick", "--stages", "verify", "--out", str(out)]).returncode == 0
    first = json.loads((out / "suite.json").read_text())["stages"]["verify"]["ran_at"]
    proc = _run_bench(["--quick", "--stages", "classify", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = json.loads((out / "suite.json").read_text())["stages"]
    assert set(stages) == {"verify", "classify"} and stages["verify"]["ran_at"] == first
    text = (out / "report.md").read_text()
    assert "scikit-image RANSAC" in text and "batched vs per-image inference" in text
    # quick and full figures never share a folder
    proc = _run_bench(["--stages", "verify", "--out", str(out)])
    assert proc.returncode != 0 and "holds a quick run" in proc.stderr


def test_unknown_stage_is_refused():
    proc = _run_bench(["--stages", "store,nope"])
    assert proc.returncode != 0 and "unknown stage(s) nope" in proc.stderr


def _results_folder(tmp_path: Path, stage: str, data: dict, status: str = "ok") -> Path:
    out = tmp_path / "r"
    out.mkdir()
    (out / f"{stage}.json").write_text(json.dumps(data))
    record = {"status": status, "command": "x", "wall_s": 1.0, "peak_rss_bytes": 2**20,
              "reason": "Traceback ...\nValueError: boom"}
    (out / "suite.json").write_text(json.dumps({
        "mode": "quick", "started": "2026-11-29 08:00:00 UTC", "finished": "2026-11-29 08:01:00 UTC",
        "machine": {"cpu": "test", "cores": 2, "versions": {}}, "stages": {stage: record}}))
    return out


def test_report_flags_figures_whose_keys_moved(tmp_path):
    # A verify result without the keys the headline reads: the report says so and the
    # command fails, so a quick CI run catches a report that silently lost a figure.
    out = _results_folder(tmp_path, "verify", {"table": [["pairs", "10"]], "renamed": {}})
    text, _, problems = report.render(out)
    assert problems and "verify: headline figures missing" in problems[0]
    assert "## Problems" in text and "| pairs | 10 |" in text
    proc = _run_bench(["report", str(out)])
    assert proc.returncode == 1


def test_report_lists_a_failed_stage_with_its_last_log_line(tmp_path):
    out = _results_folder(tmp_path, "store", {}, status="failed")
    text, plots, problems = report.render(out)
    assert problems == ["store: failed"] and not plots
    assert "**failed**: ValueError: boom" in text


def test_imported_result_is_labelled_as_such(tmp_path):
    produced = tmp_path / "elsewhere.json"
    verify = {"methods": {"delfx verify_pair affine": {"ms_per_pair": 0.1},
                          "skimage ransac": {"ms_per_pair": 100.0}},
              "table": [["ratio", "1000x"]], "machine": {"date": "2026-11-29 09:00:00 UTC"}}
    produced.write_text(json.dumps(verify))
    out = tmp_path / "results"
    proc = _run_bench(["import", "verify", str(produced), "--out", str(out),
                       "--command", "python -m benchmarks.bench_verify", "--note", "branch x"])
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "suite.json").read_text())["stages"]["verify"]
    assert record["imported_from"] == str(produced) and record["ran_at"].startswith("2026-11-29 09")
    text, _, problems = report.render(out)
    assert not problems and "Not run by this suite" in text and "delfx x1,000.00 faster" in text


def test_stage_table_and_commands():
    assert suite.STAGE_NAMES[0] == "store" and len(set(suite.STAGE_NAMES)) == len(suite.STAGES)
    index = suite.select_stages(["index"])[0]
    assert index.command(quick=True) == "python -m benchmarks.bench_index --quick"
    assert "10000000" in index.command(quick=False)
    for stage in suite.STAGES:
        assert stage.name in report.HEADLINES, stage.name
