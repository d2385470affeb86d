"""End to end on sample data: extract -> build-index -> train -> classify (every mode) -> evaluate."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.support.cli import invoke, write_split_lists
from delfx.cli import cli
from delfx.recognition.calibration import Calibration, fit_logistic
from delfx.errors import DelfxError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(sample_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    data = sample_dataset.root
    write_split_lists(sample_dataset, root)
    common = ["--model", "rootsift", "--max-side", "320", "--no-ray"]
    invoke("extract", root / "train_list.csv", root / "gallery", "--shards", "2", *common)
    invoke("extract", root / "query_list.csv", root / "queries", "--shards", "1", *common)
    invoke("build-index", root / "gallery", root / "index")
    invoke("train", root / "gallery", data / "train.csv", root / "classifier", "--epochs", "60",
            "--validation-share", "0.25", "--seed", "0")
    return root


@pytest.mark.parametrize("mode", ["retrieval", "classifier", "fused"])
def test_every_mode_end_to_end(sample_dataset, pipeline, mode):
    root, data = pipeline, sample_dataset.root
    out, evidence, calibration = (root / f"{mode}.csv", root / f"{mode}.jsonl",
                                  root / f"{mode}_calibration.json")
    summary = json.loads(invoke("classify", root / "gallery", data / "train.csv", root / "queries",
                                 "--out", out, "--mode", mode, "--classifier", root / "classifier",
                                 "--index", root / "index", "--calibrate", "--calibration",
                                 calibration, "--evidence", evidence))
    assert summary["queries"] == sum(1 for i in sample_dataset.images if i.split == "query")
    assert summary["calibrated"] and Calibration.load(calibration).names
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == summary["queries"]
    answered = [row for row in rows if row["landmarks"]]
    assert len(answered) >= 4  # at least the 4 landmark queries are answered
    for row in answered:  # Kaggle form: "label score" (calibrated: a probability)
        label, score = row["landmarks"].split(" ")
        assert label and 0.0 <= float(score) <= 1.0
    lines = [json.loads(line) for line in open(evidence)]
    assert len(lines) == len(rows) and all("candidates" in line for line in lines)
    report = json.loads(invoke("evaluate", out, data / "query.csv", "--report", root / f"report_{mode}"))
    print(mode, report)
    assert (root / f"report_{mode}" / "report.md").is_file()
    assert (root / f"report_{mode}" / "per_class.png").is_file()
    # 4 landmarks: chance top-1 is 0.25. Measured: top-1 1.0 in every mode; GAP 1.0 for
    # retrieval and fused, 0.50 for the classifier alone (it answers the distractors confidently).
    assert report["top1"] >= 0.75
    assert report["gap"] >= {"retrieval": 0.9, "fused": 0.9, "classifier": 0.4}[mode]


def test_calibration_fit_and_refusals(tmp_path):
    rng = np.random.default_rng(0)
    good = rng.normal(3, 1, (50, 2))
    bad = rng.normal(0, 1, (50, 2))
    model = fit_logistic(np.vstack([good, bad]), np.r_[np.ones(50), np.zeros(50)], ["a", "b"])
    assert model.score(np.array([[4.0, 4.0]]))[0] > 0.95 > 0.05 > model.score(np.array([[-1.0, -1.0]]))[0]
    model.save(tmp_path / "c.json")
    again = Calibration.load(tmp_path / "c.json")
    np.testing.assert_allclose(again.score(good), model.score(good))
    with pytest.raises(DelfxError, match="both right and wrong"):
        fit_logistic(good, np.ones(50), ["a", "b"])
    (tmp_path / "bad.json").write_text('{"format": "x"}')
    with pytest.raises(DelfxError, match="not a delfx calibration"):
        Calibration.load(tmp_path / "bad.json")


def test_calibration_refused_without_held_out_images(sample_dataset, pipeline):
    root, data = pipeline, sample_dataset.root
    invoke("train", root / "gallery", data / "train.csv", root / "no_validation", "--epochs", "3",
            "--validation-share", "0")
    result = CliRunner().invoke(cli, ["classify", str(root / "gallery"), str(data / "train.csv"),
                                      str(root / "queries"), "--out", str(root / "x.csv"),
                                      "--mode", "fused", "--classifier", str(root / "no_validation"),
                                      "--index", str(root / "index"), "--calibrate"])
    assert result.exit_code == 1 and "without validation images" in result.output


def test_calibration_from_other_verification_settings_is_refused(sample_dataset, pipeline,
                                                                  tmp_path):
    """A calibration learns what an inlier count means for one set of features, matcher and
    RANSAC settings: applied to others it would give confident wrong probabilities."""
    root, data = pipeline, sample_dataset.root
    calibration = tmp_path / "c.json"
    common = [root / "gallery", data / "train.csv", root / "queries", "--mode", "retrieval",
              "--index", root / "index"]
    invoke("classify", *common, "--out", tmp_path / "a.csv", "--calibrate",
           "--calibration", calibration)
    fitted = json.loads(calibration.read_text())["fitted_on"]
    assert fitted["features"] == "rootsift+pca40" and fitted["matcher"] == "mnn"
    document = json.loads(calibration.read_text())
    document["fitted_on"]["relative_threshold"] = 0.03
    calibration.write_text(json.dumps(document))
    result = CliRunner().invoke(cli, ["classify", *map(str, common), "--out",
                                      str(tmp_path / "b.csv"), "--calibration", str(calibration)])
    assert result.exit_code == 1, result.output
    assert "fitted with other verification settings: relative_threshold 0.03 (now 0.01)" \
        in result.output
    assert not (tmp_path / "b.csv").exists()
    # scoring settings too: evidence summed over 3 images is not what 1 image's evidence is
    result = CliRunner().invoke(cli, ["classify", *map(str, common), "--out",
                                      str(tmp_path / "b.csv"), "--calibration", str(calibration),
                                      "--threshold", "0.03", "--aggregate", "3"])
    assert result.exit_code == 1, result.output
    assert "aggregate 1 (now 3)" in result.output and not (tmp_path / "b.csv").exists()
    # a file from before delfx recorded the settings: used, with a warning
    for key in ("features", "matcher", "ransac", "relative_threshold", "aggregate",
                "non_landmark_penalty", "chance", "scoring", "rank_by"):
        document["fitted_on"].pop(key)
    calibration.write_text(json.dumps(document))
    result = CliRunner().invoke(cli, ["classify", *map(str, common), "--out",
                                      str(tmp_path / "c.csv"), "--calibration", str(calibration)])
    assert result.exit_code == 0, result.output
    assert "records no verification settings" in result.output


def test_chance_model_rejects_distractors_and_keeps_landmarks(sample_dataset, pipeline, tmp_path):
    """The chance model is measured on the gallery's own negative pairs; with it, a distractor
    query's chance inliers are no evidence, and every landmark query keeps its right answer."""
    root, data = pipeline, sample_dataset.root
    common = [root / "gallery", data / "train.csv", root / "queries", "--mode", "retrieval",
              "--index", root / "index"]
    raw = json.loads(invoke("classify", *common, "--out", tmp_path / "raw.csv",
                            "--chance-pairs", "0"))
    chance = json.loads(invoke("classify", *common, "--out", tmp_path / "chance.csv",
                               "--evidence", tmp_path / "chance.jsonl", "--chance-pairs", "200"))
    model = chance["chance"]
    assert raw["chance"] is None and model["pairs"] >= 20 and max(model["level"]) > 0
    assert chance["scoring"]["chance"] is True
    truth = {row["id"]: row["landmark_id"] for row in csv.DictReader(open(data / "query.csv"))}
    answers = {row["id"]: row["landmarks"] for row in csv.DictReader(open(tmp_path / "chance.csv"))}
    raw_answers = {row["id"]: row["landmarks"] for row in csv.DictReader(open(tmp_path / "raw.csv"))}
    distractors = [q for q, label in truth.items() if not label]
    landmarks = [q for q, label in truth.items() if label]
    # raw inliers answer most distractors with >= 1 inlier (score 1 + inliers); above chance,
    # most of them score below 1 (e^x for evidence x below chance), under every right answer
    answered_raw = [q for q in distractors if raw_answers[q]]
    assert len(answered_raw) >= len(distractors) // 2
    assert all(float(raw_answers[q].split(" ")[1]) > 1 for q in answered_raw)
    below = [q for q in answered_raw if float(answers[q].split(" ")[1]) < 1]
    print("distractors answered:", len(answered_raw), "of", len(distractors),
          "; below chance:", len(below), model)
    assert len(below) >= len(answered_raw) // 2
    assert all(answers[q].split(" ")[0] == truth[q] for q in landmarks)
    weakest_right = min(float(answers[q].split(" ")[1]) for q in landmarks)
    assert all(float(answers[q].split(" ")[1]) < weakest_right for q in below)
    for line in map(json.loads, open(tmp_path / "chance.jsonl")):
        if line["label"] and line["score"] > 1:
            assert line["candidates"][0]["evidence"] > 0


def test_exclude_self_runs_leave_one_out_through_the_cli(sample_dataset, pipeline, tmp_path):
    root, data = pipeline, sample_dataset.root
    summary = json.loads(invoke("classify", root / "gallery", data / "train.csv", root / "gallery",
                                "--out", tmp_path / "loo.csv", "--mode", "retrieval", "--index",
                                root / "index", "--exclude-self", "--evidence",
                                tmp_path / "loo.jsonl"))
    truth = {row["id"]: row["landmark_id"] for row in csv.DictReader(open(data / "train.csv"))}
    assert summary["queries"] == len(truth)
    for line in map(json.loads, open(tmp_path / "loo.jsonl")):
        assert all(c["gallery_id"] != line["query"] for c in line["candidates"])
        assert line["label"] == truth[line["query"]]  # the landmark's other photo, not itself
    report = json.loads(invoke("evaluate", tmp_path / "loo.csv", data / "train.csv"))
    assert report["top1"] == 1.0


def test_known_non_landmark_images_push_their_lookalikes_down(sample_dataset, pipeline,
                                                              tmp_path):
    """Images known not to be landmarks are evidence against a landmark, in the gallery (an
    empty landmark in its labels) or apart from it (--non-landmarks, images or a feature set):
    a query that shows one of them ranks below every landmark query, and --min-score 1 leaves
    it without an answer; without the penalty, it keeps its best landmark's evidence."""
    root, data = pipeline, sample_dataset.root
    distractors = [i for i in sample_dataset.images if i.landmark_id is None]
    known = distractors[: len(distractors) // 2]
    gallery_list = tmp_path / "gallery_list.csv"
    gallery_list.write_text(open(root / "train_list.csv").read() + "".join(
        f"{i.id},{data / i.path}\n" for i in known))
    labels = tmp_path / "labels.csv"
    labels.write_text(open(data / "train.csv").read() + "".join(f"{i.id},{i.path},\n" for i in known))
    known_list = tmp_path / "known_list.csv"
    known_list.write_text("id,path\n" + "".join(f"known/{i.id},{data / i.path}\n" for i in known))
    extract = ["--shards", "1", "--model", "rootsift", "--max-side", "320", "--no-ray"]
    invoke("extract", gallery_list, tmp_path / "gallery", *extract)
    invoke("extract", known_list, tmp_path / "known", *extract)
    invoke("build-index", tmp_path / "gallery", tmp_path / "index")
    inside = [tmp_path / "gallery", labels, root / "queries", "--mode", "retrieval", "--index",
              tmp_path / "index"]
    apart = [root / "gallery", data / "train.csv", root / "queries", "--mode", "retrieval",
             "--index", root / "index"]
    runs = {"inside": inside, "apart (features)": apart + ["--non-landmarks", tmp_path / "known"],
            "apart (images)": apart + ["--non-landmarks", known_list]}
    landmarks = [i.id for i in sample_dataset.images if i.split == "query" and i.landmark_id]
    for name, args in runs.items():
        invoke("classify", *args, "--out", tmp_path / "a.csv")
        invoke("classify", *args, "--out", tmp_path / "b.csv", "--min-score", "1")
        invoke("classify", *args, "--out", tmp_path / "c.csv", "--no-non-landmark-penalty")
        ranked, cut, plain = ({r["id"]: r["landmarks"].split(" ") for r in
                               csv.DictReader(open(tmp_path / f"{x}.csv"))} for x in "abc")
        weakest_right = min(float(ranked[q][1]) for q in landmarks)
        assert all(float(ranked[i.id][1]) < min(1.0, weakest_right) for i in known), name
        assert all(cut[i.id] == [""] for i in known), name
        # without the penalty: the best landmark's evidence alone, far higher
        assert all(float(plain[i.id][1]) > 10 * float(ranked[i.id][1]) for i in known), name
        assert all(ranked[q][0] == cut[q][0] == plain[q][0] for q in landmarks), name
    result = CliRunner().invoke(cli, [str(a) for a in (
        "classify", *apart, "--out", tmp_path / "d.csv", "--non-landmarks", tmp_path / "gallery")])
    assert result.exit_code == 1, result.output
    assert "non-landmark ids are gallery ids too" in result.output
    assert not (tmp_path / "d.csv").exists()


def test_frequent_landmarks_are_demoted(sample_dataset, pipeline, tmp_path):
    root, data = pipeline, sample_dataset.root
    common = [root / "gallery", data / "train.csv", root / "queries", "--mode", "retrieval",
              "--index", root / "index", "--chance-pairs", "0"]
    invoke("classify", *common, "--out", tmp_path / "a.csv")
    summary = json.loads(invoke("classify", *common, "--out", tmp_path / "b.csv",
                                "--max-per-landmark", "1"))
    before = {r["id"]: r["landmarks"].split(" ") for r in csv.DictReader(open(tmp_path / "a.csv"))}
    after = {r["id"]: r["landmarks"].split(" ") for r in csv.DictReader(open(tmp_path / "b.csv"))}
    by_label: dict[str, list[float]] = {}
    for q, (label, score) in ((q, v) for q, v in before.items() if v[0]):
        by_label.setdefault(label, []).append(float(score))
    expected = sum(len(scores) - 1 for scores in by_label.values())
    assert expected > 0 and summary["demoted"] == expected
    for q in before:
        assert after[q][0] == before[q][0]  # labels kept
        if before[q][0]:
            rank = sorted(by_label[before[q][0]], reverse=True).index(float(before[q][1])) + 1
            assert float(after[q][1]) == pytest.approx(float(before[q][1]) / rank, rel=1e-4)


def test_untrusted_classifier_and_calibration_are_warned_about(sample_dataset, pipeline, tmp_path):
    """A classifier trained on 2 images per class, and a calibration fitted on a handful of
    answers, are used as asked, with a warning that says why they are not to be trusted."""
    root, data = pipeline, sample_dataset.root
    result = CliRunner().invoke(cli, [str(a) for a in (
        "classify", root / "gallery", data / "train.csv", root / "queries", "--out",
        tmp_path / "f.csv", "--mode", "fused", "--classifier", root / "classifier", "--index",
        root / "index", "--calibrate")])
    assert result.exit_code == 0, result.output
    assert "training images for 4 classes (< 5 per class)" in result.output
    assert "its proposals may lower GAP" in result.output
    assert "too few to trust" in result.output


def test_search_settings_reach_the_verification(sample_dataset, pipeline, tmp_path):
    """classify's --ransac, --threshold, --k and --max-distance are the verification's: they are
    recorded with the run, and a homography verifies with other inlier counts than affine."""
    root, data = pipeline, sample_dataset.root
    common = [root / "gallery", data / "train.csv", root / "queries", "--mode", "retrieval",
              "--index", root / "index"]
    affine = json.loads(invoke("classify", *common, "--out", tmp_path / "a.csv", "--evidence",
                               tmp_path / "a.jsonl"))
    homography = json.loads(invoke("classify", *common, "--out", tmp_path / "h.csv", "--evidence",
                                   tmp_path / "h.jsonl", "--ransac", "homography", "--threshold",
                                   "0.02", "--k", "5", "--max-distance", "0.9"))
    assert (affine["scoring"]["ransac"], affine["scoring"]["relative_threshold"]) == ("affine", 0.01)
    assert (homography["scoring"]["ransac"], homography["scoring"]["relative_threshold"]) == (
        "homography", 0.02)

    def inliers(path):
        return [c["inliers"] for line in map(json.loads, open(path)) for c in line["candidates"]]
    assert inliers(tmp_path / "a.jsonl") != inliers(tmp_path / "h.jsonl")


def test_an_index_in_parts_gives_the_same_submission(sample_dataset, pipeline, tmp_path):
    """classify over `build-index --parts 2` writes what it writes over the single index; with
    --ray (a local Ray instance the delfx process starts, one actor per part) too."""
    import os
    import subprocess
    import sys
    root, data = pipeline, sample_dataset.root
    invoke("build-index", root / "gallery", tmp_path / "parts", "--parts", "2")
    common = [root / "gallery", data / "train.csv", root / "queries", "--mode", "retrieval"]
    invoke("classify", *common, "--index", root / "index", "--out", tmp_path / "single.csv")
    invoke("classify", *common, "--index", tmp_path / "parts", "--out", tmp_path / "parts.csv")
    single = (tmp_path / "single.csv").read_text()
    assert (tmp_path / "parts.csv").read_text() == single and len(single.splitlines()) > 4
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    proc = subprocess.run([sys.executable, "-m", "delfx", "classify", *map(str, common),
                           "--index", str(tmp_path / "parts"), "--out", str(tmp_path / "ray.csv"),
                           "--ray"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "ray.csv").read_text() == single
