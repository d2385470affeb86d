"""GeM global models: the layer, training for real on sample data, schema v2 global descriptors,
extraction with --global-model, the global FAISS shortlist, and classify/evaluate end to end."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from tests.support.cli import invoke, write_split_lists
from delfx.cli import cli
from delfx.errors import DelfxError, SchemaVersionError, StoreError
from delfx.globalnet.gem import gem, keras_layers
from delfx.globalnet.model import GlobalConfig, load_global_model
from delfx.store import FeatureSet, ImageFeatures, Manifest, ShardReader, ShardWriter, inspect, verify
from delfx.store import schema as S
from delfx.store.synthetic import synthetic_image

MODEL = dict(model_id="test-model", model_hash="ab" * 32, config={"preset": "test"})
GLOBAL = {"id": "gem-test", "hash": "cd" * 32, "dim": 8}
# Small images keep VGG16 fast; crops of 80 from 96 still augment.
FAST = ["--image-size", "96", "--crop-size", "80", "--batch-size", "8", "--seed", "0"]


# --- the layer ----------------------------------------------------------------------------------

@pytest.mark.parametrize("per_channel", [False, True])
def test_gem_layer_is_generalised_mean_and_serialises(per_channel):
    import keras
    layers = keras_layers()
    x = np.random.default_rng(0).random((2, 5, 6, 4)).astype(np.float32)
    layer = layers["GeM"](p=3.0, per_channel=per_channel)
    out = np.asarray(layer(x))
    np.testing.assert_allclose(out, gem(x, 3.0), rtol=1e-5)
    # p = 1 is average pooling; a large p approaches max pooling.
    np.testing.assert_allclose(gem(x, 1.0), x.mean(axis=(1, 2)), rtol=1e-6)
    assert np.all(gem(x, 60.0) <= x.max(axis=(1, 2)) + 1e-6)
    assert np.all(gem(x, 60.0) > 0.9 * x.max(axis=(1, 2)))
    assert layer.p.shape == ((4,) if per_channel else (1,)) and layer.p.trainable
    again = layers["GeM"].from_config(layer.get_config())
    assert (again.per_channel, again.p_init) == (per_channel, 3.0)
    # p is learnt: the gradient of the pooled output reaches it.
    import tensorflow as tf
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(layer(x))
    grad = np.asarray(tape.gradient(y, layer.p))
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0
    del keras


def test_config_refusals():
    with pytest.raises(DelfxError, match="needs ResNet50 weights"):
        GlobalConfig(model="concat")
    with pytest.raises(DelfxError, match="crop_size"):
        GlobalConfig(image_size=96, crop_size=128)
    with pytest.raises(DelfxError, match="model must be one of"):
        GlobalConfig(model="gem-alexnet")


# --- store schema v2 ----------------------------------------------------------------------------

def test_shards_store_global_descriptors_and_read_v1(tmp_path):
    rng = np.random.default_rng(0)
    records = [synthetic_image(f"img{i}", rng, num_features=5) for i in range(3)]
    vectors = rng.standard_normal((3, 8)).astype(np.float32)
    for record, vector in zip(records, vectors):
        record.global_descriptor = vector
    failed = ImageFeatures.failed("bad", "corrupt", "x", descriptor_dim=40)
    with ShardWriter(tmp_path / "s.h5", descriptor_dim=40, global_model=GLOBAL, **MODEL) as writer:
        for record in records + [failed]:
            writer.add(record)
    with ShardReader(tmp_path / "s.h5") as reader:
        assert reader.schema_version == S.SCHEMA_VERSION and reader.global_model == GLOBAL
        np.testing.assert_allclose(reader.global_descriptors()[:3], vectors)
        assert not reader.global_descriptors()[3].any()  # failed image: zero row
        np.testing.assert_allclose(reader.get("img1").global_descriptor, vectors[1])

    with pytest.raises(StoreError, match="no global descriptor"):
        with ShardWriter(tmp_path / "t.h5", descriptor_dim=40, global_model=GLOBAL, **MODEL) as w:
            w.add(synthetic_image("plain", rng, num_features=3))
    assert not (tmp_path / "t.h5").exists()

    # A version-1 shard (no global attributes or dataset) is still read, as having none.
    with ShardWriter(tmp_path / "v1.h5", descriptor_dim=40, **MODEL) as writer:
        writer.add(records[0])
    with h5py.File(tmp_path / "v1.h5", "r+") as f:
        f.attrs[S.ATTR_SCHEMA_VERSION] = 1
        for name in (S.ATTR_GLOBAL_DIM, S.ATTR_GLOBAL_MODEL_ID, S.ATTR_GLOBAL_MODEL_HASH):
            del f.attrs[name]
    with ShardReader(tmp_path / "v1.h5") as reader:
        assert reader.schema_version == 1 and reader.global_model is None
        assert reader.get(0).global_descriptor is None
        with pytest.raises(StoreError, match="no global descriptors"):
            reader.global_descriptors()
    with h5py.File(tmp_path / "v1.h5", "r+") as f:
        f.attrs[S.ATTR_SCHEMA_VERSION] = S.SCHEMA_VERSION + 1
    with pytest.raises(SchemaVersionError, match=f"schema version {S.SCHEMA_VERSION + 1} is not"):
        ShardReader(tmp_path / "v1.h5")


def test_feature_set_global_model_must_match_manifest(tmp_path):
    rng = np.random.default_rng(1)
    manifest = Manifest(num_shards=1, descriptor_dim=40, descriptor_dtype="float32",
                        global_model=GLOBAL, **MODEL)
    with ShardWriter(tmp_path / S.shard_file_name(0, 1), descriptor_dim=40, global_model=GLOBAL,
                     **MODEL) as writer:
        record = synthetic_image("a", rng, num_features=4)
        record.global_descriptor = np.ones(8, np.float32)
        writer.add(record)
    manifest.record(tmp_path, writer.info)
    with FeatureSet(tmp_path) as fs:
        assert fs.global_descriptors().shape == (1, 8)
    assert inspect(tmp_path)["global"] == GLOBAL and verify(tmp_path).ok
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["global_model"] = {**GLOBAL, "hash": "ef" * 32}
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert "global descriptors" in "\n".join(verify(tmp_path).problems)
    with pytest.raises(StoreError, match="global descriptors"):
        FeatureSet(tmp_path).get(0)


# --- training and the whole pipeline on sample data --------------------------------------------

@pytest.fixture(scope="module")
def trained(sample_dataset, tmp_path_factory):
    """gem-vgg16 trained through the CLI on the train views; galleries extracted with it."""
    root = tmp_path_factory.mktemp("gem")
    data = sample_dataset.root
    write_split_lists(sample_dataset, root)
    summary = json.loads(invoke("train", root / "train_list.csv", data / "train.csv",
                                 root / "gem", "--model", "gem-vgg16", "--epochs", "20",
                                 "--validation-share", "0", *FAST))
    common = ["--model", "rootsift", "--max-side", "320", "--no-ray", "--global-model", root / "gem"]
    invoke("extract", root / "train_list.csv", root / "gallery", "--shards", "2", *common)
    invoke("extract", root / "query_list.csv", root / "queries", "--shards", "1", *common)
    invoke("build-index", root / "gallery", root / "index")
    return root, summary


@pytest.mark.slow
def test_gem_training_learns_and_is_recorded(sample_dataset, trained):
    root, summary = trained
    assert summary["model"] == "gem-vgg16" and summary["classes"] == 4
    model = load_global_model(root / "gem")
    # The throughput reported is the one recorded, in images per second (a VGG16 at 160 px on
    # a CPU: neither milliseconds nor images per minute).
    training = model.info["training"]
    assert summary["train_samples_per_s"] == pytest.approx(training["train_samples_per_s"], abs=0.1)
    assert summary["inference_samples_per_s"] == pytest.approx(
        training["inference_samples_per_s"], abs=0.1)
    assert 0.5 < training["train_samples_per_s"] < 5000
    assert 0.5 < training["inference_samples_per_s"] < 5000
    curves = json.loads((root / "gem" / "curves.json").read_text())
    assert min(curves["loss"][-5:]) < 0.6 * curves["loss"][0]  # the loss falls
    info = model.info
    assert info["global_model"]["model"] == "gem-vgg16" and info["versions"]["keras"]
    assert len(info["model_hash"]) == 64 and len(info["backbone_weights_sha256"]) == 64
    # Predictions on the unseen query views beat chance (0.25) by far.
    from delfx.images import load_image
    from delfx.labels import read_labels
    truth = read_labels(sample_dataset.query_csv)
    queries = [i for i in sample_dataset.images if i.split == "query" and truth[i.id]]
    images = [load_image(sample_dataset.root / i.path) for i in queries]
    probs = model.predict_images(images)
    hits = sum(model.labels.label(int(k)) == truth[i.id] for k, i in zip(probs.argmax(1), queries))
    assert hits / len(queries) >= 0.75
    # Classifying the stored descriptor gives what classifying the pixels gives.
    with FeatureSet(root / "queries") as fs:
        stored = np.stack([fs.get(i.id).global_descriptor for i in queries])
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=2e-3)  # float16 storage
    np.testing.assert_allclose(model.predict_descriptors(stored), probs, atol=0.02)


@pytest.mark.slow
def test_extraction_stores_globals_and_refuses_mixing(trained, tmp_path):
    root, _ = trained
    summary = inspect(root / "gallery")
    assert summary["global"]["dim"] == 512 and summary["schema_version"] == S.SCHEMA_VERSION
    assert "global        512-d" in invoke("inspect", root / "gallery")
    assert verify(root / "gallery").ok
    with FeatureSet(root / "gallery") as fs:
        vectors = fs.global_descriptors()
        assert vectors.shape == (fs.num_images, 512)
    assert (root / "index" / "global.faiss").is_file()
    # Resuming into a set made without global descriptors is refused, not silently mixed.
    result = CliRunner().invoke(cli, ["extract", str(root / "query_list.csv"), str(root / "queries"),
                                      "--shards", "1", "--model", "rootsift", "--max-side", "320",
                                      "--no-ray"])
    assert result.exit_code != 0 and "global descriptors" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["shortlist", "shortlist delg", "classifier", "fused"])
def test_classify_and_evaluate_with_global_models(sample_dataset, trained, mode):
    root, _ = trained
    data = sample_dataset.root
    out = root / f"{mode}.csv"
    mode, _, scoring = mode.partition(" ")
    summary = json.loads(invoke("classify", root / "gallery", data / "train.csv", root / "queries",
                                 "--out", out, "--mode", mode, "--index", root / "index",
                                 "--classifier", root / "gem", "--shortlist", "5",
                                 *(["--scoring", scoring] if scoring else [])))
    assert summary["scoring"]["scoring"] == (scoring or "inliers")
    assert summary["chance"] is None  # raw inliers unless --chance-pairs asks for a model
    assert summary["queries"] == sum(1 for i in sample_dataset.images if i.split == "query")
    report = json.loads(invoke("evaluate", out, data / "query.csv"))
    assert report["top1"] >= 0.75 and report["gap"] >= 0.6, report


@pytest.mark.slow
def test_shortlist_on_query_images_embeds_them(sample_dataset, trained):
    """Query images (no feature set) are extracted like the gallery and embedded on the fly."""
    root, _ = trained
    data = sample_dataset.root
    out = root / "images.csv"
    invoke("classify", root / "gallery", data / "train.csv", root / "query_list.csv", "--out", out,
            "--mode", "shortlist", "--global-model", root / "gem", "--shortlist", "5")
    report = json.loads(invoke("evaluate", out, data / "query.csv"))
    assert report["top1"] >= 0.75
    result = CliRunner().invoke(cli, ["classify", str(root / "gallery"), str(data / "train.csv"),
                                      str(root / "query_list.csv"), "--out", str(out), "--mode",
                                      "shortlist"])
    assert result.exit_code != 0 and "no global descriptor" in result.output


@pytest.mark.slow
def test_concat_model_with_user_resnet_weights(sample_dataset, tmp_path):
    """VGG16 ⊕ ResNet50 (random ResNet weights from a file, as a user would give them)."""
    import keras
    weights = tmp_path / "resnet50.weights.h5"
    keras.applications.ResNet50(include_top=False, weights=None).save_weights(weights)
    data = sample_dataset.root
    from delfx.globalnet.train import train_global_model
    config = GlobalConfig(model="concat", backbone_weights=str(weights), epochs=1, image_size=64,
                          crop_size=48, per_channel_p=True, validation_share=0.0)
    result = train_global_model(data / "train.csv", data / "train.csv", tmp_path / "cat", config)
    model = result.model
    assert result.num_classes == 4 and model.descriptor_dim == 512 + 2048
    assert model.embedder.get_layer("resnet50_gem").p.shape == (2048,)
    assert json.loads((tmp_path / "cat" / "config.json").read_text())["global_model"] == config.to_dict()
    from delfx.images import load_image
    vectors = model.embed([load_image(data / sample_dataset.images[0].path)])
    assert vectors.shape == (1, 2560)
    np.testing.assert_allclose(np.linalg.norm(vectors), 1.0, rtol=1e-5)
    result = CliRunner().invoke(cli, ["train", str(data / "train.csv"), str(data / "train.csv"),
                                      str(tmp_path / "r"), "--model", "gem-resnet50"])
    assert result.exit_code != 0 and "needs ResNet50 weights" in result.output


@pytest.mark.slow
def test_search_with_global_shortlist(trained):
    root, _ = trained
    lines = invoke("search", root / "index", root / "gallery", root / "queries",
                    "--global-shortlist", "--shortlist", "3", "--top", "3")
    results = [json.loads(line) for line in lines.splitlines()]
    with FeatureSet(root / "queries") as fs:
        assert {r["query"] for r in results} == set(fs.image_ids)
    for query in {r["query"] for r in results}:
        mine = [r for r in results if r["query"] == query]
        assert 1 <= len(mine) <= 3 and [r["rank"] for r in mine] == list(range(1, len(mine) + 1))
        assert all(0 < r["votes"] <= 1000 for r in mine)  # cosine x 1000
    # Landmark queries find a gallery view of their own landmark first.
    firsts = {r["query"]: r["gallery_id"] for r in results if r["rank"] == 1}
    landmark = [q for q in firsts if not q.startswith("non_landmark")]
    hits = sum(firsts[q].split("/")[0] == q.split("/")[0] for q in landmark)
    assert hits / len(landmark) >= 0.75


def test_train_refuses_options_of_the_other_kind(tmp_path):
    (tmp_path / "labels.csv").write_text("id,landmark_id\na,x\n")
    for args, message in ((["--fine-tune"], "--fine-tune is for the GeM models"),
                          (["--image-size", "96"], "--image-size is for the GeM models"),
                          (["--model", "gem-vgg16", "--head", "pool"], "--head is for delf-bottleneck")):
        result = CliRunner().invoke(cli, ["train", str(tmp_path), str(tmp_path / "labels.csv"),
                                          str(tmp_path / "out"), *args])
        assert result.exit_code == 2 and message in result.output, result.output


def test_global_index_round_trip_and_model_check(tmp_path):
    from delfx.index.global_index import GlobalIndex
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((20, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"g{i}" for i in range(20)]
    index = GlobalIndex(vectors, ids, GLOBAL)
    sims, found = index.search(vectors[[3, 7]], 4)
    assert [f[0] for f in found] == ["g3", "g7"] and np.allclose(sims[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 1e-6)  # best first
    index.save(tmp_path)
    again = GlobalIndex.load(tmp_path)
    assert again.image_ids == ids and again.model == GLOBAL
    assert again.search(vectors[5], 1)[1] == [["g5"]]
    again.check_query_model(dict(GLOBAL), "queries")
    with pytest.raises(DelfxError, match="do not come from the gallery's global model"):
        again.check_query_model({**GLOBAL, "hash": "ef" * 32}, "queries")
    with pytest.raises(DelfxError, match="8-d"):
        again.search(np.ones((1, 4), np.float32), 1)


@pytest.mark.slow
def test_training_prints_no_tensorflow_start_up_noise(sample_dataset, tmp_path):
    """`train --model gem-vgg16` printed TensorFlow's C++ start-up lines (a cuInit error
    among them) at default verbosity: Keras was imported before TensorFlow was, quietly."""
    import subprocess
    import sys
    write_split_lists(sample_dataset, tmp_path)
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "delfx", "train", str(tmp_path / "train_list.csv"),
                           str(sample_dataset.root / "train.csv"), str(tmp_path / "gem"),
                           "--model", "gem-vgg16", "--epochs", "1", "--image-size", "64",
                           "--crop-size", "48"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    noise = [line for line in proc.stderr.splitlines()
             if any(w in line for w in ("cuInit", "oneDNN", "TensorFlow binary", "absl::",
                                        "cuda", "E0000", "W0000"))]
    assert not noise, noise


@pytest.mark.slow
def test_global_shortlist_in_batches_equals_one_query_at_a_time(trained, monkeypatch):
    """search_many asks the global index GLOBAL_BATCH queries at a time (one call per batch:
    an exact index is read whole per call); the results are those of one query per call."""
    from delfx.index import search as search_module
    root, _ = trained

    def results(batch: int) -> list:
        monkeypatch.setattr(search_module, "GLOBAL_BATCH", batch)
        return [(q, [r.to_json() for r in rs]) for q, rs in search_module.run_search(
            root / "index", root / "gallery", root / "queries", {"shortlist": 3},
            global_shortlist=True)]

    one = results(1)
    assert len(one) >= 4 and results(3) == one and results(256) == one


@pytest.mark.slow
def test_global_shortlist_search_job_equals_the_stream(trained, tmp_path):
    """`search --global-shortlist --out` (a query job: the processor loads and checks the global
    index and model once) writes what the streamed search prints: query feature sets, and query
    images embedded with the GeM model in the job; a model other than the gallery's is refused."""
    root, _ = trained
    common = ["search", root / "index", root / "gallery", root / "queries", "--global-shortlist",
              "--shortlist", "3"]
    streamed = invoke(*common)
    invoke(*common, "--out", tmp_path / "job.jsonl", "--chunk-size", "2")
    assert (tmp_path / "job.jsonl").read_text() == streamed and len(streamed.splitlines()) >= 4
    images = ["search", root / "index", root / "gallery", root / "query_list.csv",
              "--global-shortlist", "--shortlist", "3", "--global-model", root / "gem"]
    invoke(*images, "--out", tmp_path / "images.jsonl")
    assert (tmp_path / "images.jsonl").read_text() == invoke(*images)
    import shutil

    from click.testing import CliRunner

    from delfx.cli import cli
    other = tmp_path / "other-gem"  # the same network, recorded as another model
    shutil.copytree(root / "gem", other)
    text = (other / "config.json").read_text()
    (other / "config.json").write_text(text.replace(load_global_model(root / "gem").model_hash,
                                                    "ab" * 32))
    refused = CliRunner().invoke(cli, [str(a) for a in images[:-1]] + [str(other), "--out",
                                                                       str(tmp_path / "x.jsonl")])
    assert refused.exit_code == 1 and "do not come from the gallery's global model" in refused.output
    assert not (tmp_path / "x.jsonl").exists()
