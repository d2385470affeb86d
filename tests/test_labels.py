"""Labels: the CSV reader, the label map, the stratified split."""

from __future__ import annotations

import numpy as np
import pytest

from delfx.errors import DelfxError
from delfx.labels import LabelMap, read_labels, stratified_split


def test_read_labels(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("\ufeffid,path,landmark_id\na,x.jpg,7\nb,y.jpg,\nc,z.jpg, 12 \na,x.jpg,7\n")
    assert read_labels(path) == {"a": "7", "b": None, "c": "12"}
    path.write_text("id,label\na,1\n")
    with pytest.raises(DelfxError, match="no column 'landmark_id'"):
        read_labels(path)
    path.write_text("id,landmark_id\na,1\na,2\n")
    with pytest.raises(DelfxError, match="labelled both"):
        read_labels(path)
    with pytest.raises(DelfxError, match="not found"):
        read_labels(tmp_path / "missing.csv")

def test_label_map_min_samples_and_json(tmp_path):
    labels = {f"i{k}": l for k, l in enumerate(["10"] * 5 + ["9"] * 3 + ["x"] * 3 + ["2"])}
    label_map, dropped = LabelMap.build(labels, min_samples=3)
    assert label_map.labels == ("9", "10", "x")  # numeric ids in numeric order
    assert label_map.counts == (3, 5, 3)
    assert dropped == {"classes_dropped": 1, "images_dropped": 1}
    assert label_map.index("10") == 1 and label_map.label(2) == "x" and "2" not in label_map
    label_map.save(tmp_path / "labels.json")
    assert LabelMap.load(tmp_path / "labels.json") == label_map

def test_stratified_split_invariants():
    rng = np.random.default_rng(3)
    sizes = [1, 1, 2, 2, 3, 5, 9, 10, 40, 200] + list(rng.integers(1, 30, 200))
    targets = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    train, val = stratified_split(targets, 0.1, seed=5)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(targets)
    for k, n in enumerate(sizes):
        assert (targets[train] == k).sum() >= 1  # every class trains (single images included)
        if n == 1:
            assert (targets[val] == k).sum() == 0
    assert (targets[val] == 9).sum() == 20  # 10% of a large class, exactly
    # The long tail (most classes round down to 0 validation images) still adds up to 10%.
    assert len(val) == round(0.1 * sum(n for n in sizes if n >= 2))
    five_each = np.repeat(np.arange(8), 5)
    assert len(stratified_split(five_each, 0.1, seed=0)[1]) == 4
    again, _ = stratified_split(targets, 0.1, seed=5)
    other, _ = stratified_split(targets, 0.1, seed=6)
    np.testing.assert_array_equal(again, train)
    assert not np.array_equal(other, train)
    assert len(stratified_split(targets, 0.0, seed=5)[1]) == 0


def test_labels_and_features_named_by_file_get_a_hint():
    from delfx.labels import id_mismatch_hint
    features = ["china/view_00.jpg", "china/view_01.jpg", "flower/view_00.png"]
    hint = id_mismatch_hint(["china/view_00", "flower/view_00"], features)
    assert "extract from the label file itself" in hint
    assert id_mismatch_hint(["other/a", "other/b"], features) == ""
    assert id_mismatch_hint(["china/view_00.jpg"], features) == ""  # the same ids: no hint


def test_train_on_features_of_an_image_folder_says_how_to_fix_the_ids(sample_dataset, tmp_path):
    """The quickstart's next step, as issue 19 found it: features of the images/ folder, labels
    of the sample data's label file."""
    from click.testing import CliRunner

    from delfx.cli import cli
    from tests.support.cli import invoke
    invoke("extract", sample_dataset.root / "images", tmp_path / "features", "--shards", "1",
           "--model", "rootsift", "--max-side", "160", "--no-ray")
    result = CliRunner().invoke(cli, ["train", str(tmp_path / "features"),
                                      str(sample_dataset.root / "labels.csv"),
                                      str(tmp_path / "classifier")])
    assert result.exit_code == 1
    assert "extract from the label file itself" in result.output
