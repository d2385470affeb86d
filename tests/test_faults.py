"""Fault injection: malformed inputs and damaged artifacts for every command, made here.

Covers extract (list files, broken images, options, config files, output folders in every
state), inspect and verify (damaged manifests and shards), build-index (output folders that
are not its own, bad factories, damaged features), search (damaged index folders, foreign
queries), train (labels, output folders, hyper-parameters), classify (labels, calibrations,
missing parts) and evaluate (malformed submissions and truth files): more than 150 cases.

Each case runs the real command line in-process on a fresh copy of one small world (sample
photos, a RootSIFT feature set, its index, a classifier, labels, a submission) and asserts:

* no traceback and no "unexpected error" (a delfx bug) reaches the user: one clear line;
* the exit status (0: done, 1: refused or failed, 2: a usage error);
* the message, where the case names one;
* nothing outside the command's own output changed (byte for byte, every file of the world).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import pytest
from click.testing import CliRunner

from delfx.cli import cli

pytestmark = pytest.mark.slow


@dataclass
class Case:
    """One fault: `setup(world)` damages the world and returns the command line (paths
    relative to the world become absolute); `outputs` may change, nothing else may."""

    name: str
    setup: Callable[[Path], list]
    exit: int | tuple[int, ...]
    message: str = ""
    outputs: tuple[str, ...] = ()
    hold_lock: str | None = None  # hold the extraction lock of this folder during the run
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# The world: built once, copied for every case
# --------------------------------------------------------------------------------------------

FEATURES, INDEX, CLASSIFIER = "features", "index", "classifier"
EXTRACT = ["--model", "rootsift", "--max-features", "60", "--no-ray"]


@pytest.fixture(scope="module")
def world_template(tmp_path_factory):
    from delfx.sample_data import write_sample_data
    root = tmp_path_factory.mktemp("world") / "w"
    data = write_sample_data(root / "data", landmarks=3, views=2, non_landmarks=1,
                             long_side=160, seed=0)
    (root / "list.csv").write_text("id,path\n" + "".join(
        f"{i.id},{data.root / i.path}\n" for i in data.images))
    (root / "labels.csv").write_text("id,landmark_id\n" + "".join(
        f"{i.id},{i.landmark_id or ''}\n" for i in data.images))
    _ok("extract", root / "list.csv", root / FEATURES, "--shards", "2", *EXTRACT)
    _ok("build-index", root / FEATURES, root / INDEX)
    _ok("train", root / FEATURES, root / "labels.csv", root / CLASSIFIER, "--units", "16",
        "--epochs", "2", "--validation-share", "0.3")
    _ok("classify", root / FEATURES, root / "labels.csv", root / FEATURES, "--out",
        root / "submission.csv", "--mode", "retrieval", "--index", root / INDEX, "--calibrate",
        "--calibration", root / "calibration.json")
    from tests.support.broken_images import write_broken_images
    (root / "broken").mkdir()
    kinds = write_broken_images(root / "broken" / "all", min_side=16)
    for name in kinds:
        (root / "broken" / _folder(name)).mkdir()
        shutil.move(root / "broken" / "all" / name, root / "broken" / _folder(name) / name)
    shutil.rmtree(root / "broken" / "all")
    return root


def _folder(name: str) -> str:
    return name.replace(".", "_")


def _ok(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _snapshot(root: Path, outputs: tuple[str, ...]) -> dict[str, str]:
    skip = [root / o for o in outputs]
    out = {}
    for path in sorted(root.rglob("*")):
        if any(path == s or s in path.parents for s in skip):
            continue
        if path.is_symlink():
            out[str(path.relative_to(root))] = "->" + str(path.readlink())
        elif path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            out[str(path.relative_to(root))] = "dir"
    return out


# --------------------------------------------------------------------------------------------
# Damage helpers
# --------------------------------------------------------------------------------------------

def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def manifest_edit(w: Path, change: Callable[[dict], None], folder: str = FEATURES) -> None:
    path = w / folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def json_edit(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def flip(path: Path, at: float = 0.5, count: int = 256) -> None:
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def flip_descriptors(shard: Path) -> None:
    with h5py.File(shard, "r") as f:
        offset = f["features/descriptors"].id.get_chunk_info(0).byte_offset + 64
    data = bytearray(shard.read_bytes())
    for i in range(offset, offset + 2000):
        data[i] ^= 0xA5
    shard.write_bytes(bytes(data))


SHARD0 = f"{FEATURES}/shard-00000-of-00002.h5"


def symlink_out(path: Path, target: Path) -> None:
    """Move a file out of its folder and leave a symlink to it in its place."""
    path.rename(target)
    path.symlink_to(target)


def other_feature_set(w: Path, name: str = "other") -> Path:
    from delfx.store.synthetic import write_synthetic_feature_set
    write_synthetic_feature_set(w / name, num_images=12, num_shards=1)
    return w / name


# --------------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------------

def _list_case(name, content, message):
    def setup(w):
        return ["extract", write(w / "bad.csv", content), "out", "--shards", "1", *EXTRACT]
    return Case(f"extract list: {name}", setup, 1, message, ("out",))


def _extract_cases() -> list[Case]:
    cases = [
        _list_case("NUL in an id", b"id,path\na\x00b,data/images/china/view_00.jpg\n", "control character"),
        _list_case("row without a path", b"id,path\na,data/images/china/view_00.jpg\nb\n", "has no path"),
        _list_case("quoted newline in an id", b'id,path\n"a\nb",x.jpg\n', "control character"),
        _list_case("tab in an id", b"id,path\na\tb,x.jpg\n", "control character"),
        _list_case("Latin-1 text", "id,path\ncaf\xe9,x.jpg\n".encode("latin-1"), "not UTF-8"),
        _list_case("damaged UTF-16", b"\xff\xfei\x00d\x00,\x00\xd8", "UTF-16"),
        _list_case("header id,file", b"id,file\na,x.jpg\n", "no 'path' column"),
        _list_case("semicolons", b"id;path\na;x.jpg\n", "separated by ';'"),
        _list_case("tabs", b"id\tpath\na\tx.jpg\n", "separated by"),
        _list_case("empty file", b"", "no images found"),
        _list_case("comments only", b"# nothing\n\n", "no images found"),
        _list_case("duplicate ids", b"id,path\na,x.jpg\na,y.jpg\n", "appears twice"),
        _list_case("unterminated quote", b'id,path\n"a,x.jpg\n', ""),
        Case("extract: input missing", lambda w: ["extract", "nope", "out", *EXTRACT], 2,
             "does not exist", ("out",)),
        Case("extract: folder without images", lambda w: [
            "extract", write(w / "empty" / "notes.txt", "x").parent, "out", *EXTRACT], 1,
             "no images found", ("out",)),
        Case("extract: image paths that do not exist", lambda w: [
            "extract", write(w / "ghosts.csv", "id,path\na,nope.jpg\nb,gone.png\n"), "out",
            "--shards", "1", *EXTRACT], 0, "", ("out",)),
        Case("extract: a folder named as an image", lambda w: [
            "extract", write(w / "dirs.csv", "id,path\na,data/images\n"), "out", "--shards", "1",
            *EXTRACT], 0, "", ("out",)),
    ]
    usage = [("--shards", "0"), ("--chunk-size", "0"), ("--max-retries", "-1"), ("--workers", "0"),
             ("--num-cpus", "0"), ("--cpus-per-worker", "0"), ("--stall-timeout", "0"),
             ("--scales", "a,b"), ("--descriptor-dtype", "int8"), ("--precision", "fp8"),
             ("--model", "bogus"), ("--preset", "bogus"), ("--score-threshold", "nan"),
             ("--gpus-per-worker", "-1"), ("--max-side", "big"), ("--scales", "")]
    for option, value in usage:
        cases.append(Case(f"extract usage: {option} {value}", lambda w, o=option, v=value: [
            "extract", "list.csv", "out", *EXTRACT, o, v], 2, "", ("out",)))
    config_errors = [
        (["--max-side", "8"], "max_side must be >= 16"),
        (["--image-size", "4"], "image_size must be >= 16"),
        (["--batch-size", "4"], "batch_size > 1 needs image_size"),
        (["--max-features", "0"], "max_features must be >= 1"),
        (["--descriptor-dim", "200"], "needs a PCA with at least 200"),
        (["--descriptor-dim", "-1"], "descriptor_dim must be >= 0"),
        (["--pca-path", "nope.h5"], "PCA file not found"),
        (["--scales", "-1,1"], "scales must be positive"),
    ]
    for extra, message in config_errors:
        cases.append(Case(f"extract config: {' '.join(extra)}", lambda w, e=extra: [
            "extract", "list.csv", "out", "--shards", "1", *EXTRACT, *e], 1, message, ("out",)))

    def toml(text):
        return lambda w: ["extract", "list.csv", "out", "--shards", "1", *EXTRACT, "--config",
                          write(w / "c.toml", text)]
    cases += [
        Case("extract config file: not TOML", toml("max_side = = 3"), 1, "cannot read config file", ("out",)),
        Case("extract config file: unknown key", toml("colour = 'red'"), 1, "unknown config keys", ("out",)),
        Case("extract config file: wrong type", toml("max_side = 'big'"), 1, "must be an integer", ("out",)),
        Case("extract config file: scales as text", toml("scales = 'x'"), 1, "scales", ("out",)),
        Case("extract config file: bool as int", toml("min_side = true"), 1, "must be an integer", ("out",)),
        Case("extract config file: NaN threshold", lambda w: [
            "extract", "list.csv", "out", "--shards", "1", *EXTRACT, "--config",
            write(w / "c.json", '{"score_threshold": NaN}')], 1, "finite", ("out",)),
        Case("extract: garbage PCA file", lambda w: [
            "extract", "list.csv", "out", "--shards", "1", *EXTRACT, "--pca-path",
            write(w / "p.h5", b"not hdf5")], 1, "cannot read PCA file", ("out",)),
        Case("extract: PCA of another model", lambda w: [
            "extract", "list.csv", "out", "--shards", "1", *EXTRACT, "--pca-path",
            str(Path(__import__("delfx").__file__).parent / "models" / "delf_hybrid_pca.h5")], 1,
             "PCA fitted on 128-d", ("out",)),
        Case("extract: delf-resnet50 without weights", lambda w: [
            "extract", "list.csv", "out", "--model", "delf-resnet50", "--no-ray"], 1,
             "needs its weights", ("out",)),
        Case("extract: tfhub folder without a SavedModel", lambda w: [
            "extract", "list.csv", "out", "--model", "tfhub", "--model-path",
            write(w / "hub" / "x.txt", "x").parent, "--no-ray"], 1, "not a SavedModel", ("out",)),
        Case("extract: --global-model not a model", lambda w: [
            "extract", "list.csv", "out", *EXTRACT, "--global-model",
            write(w / "gm" / "x.txt", "x").parent], 1, "not a delfx global model", ("out",)),
    ]
    # output folders in every state
    cases += [
        Case("extract: output is a file", lambda w: [
            "extract", "list.csv", write(w / "out", "x"), *EXTRACT], 2, "is a file"),
        Case("extract: garbage manifest", lambda w: (write(w / FEATURES / "manifest.json", "{"), [
            "extract", "list.csv", FEATURES, "--shards", "2", *EXTRACT])[1], 1,
             "--overwrite", (FEATURES,)),
        Case("extract: empty manifest", lambda w: (write(w / FEATURES / "manifest.json", ""), [
            "extract", "list.csv", FEATURES, "--shards", "2", *EXTRACT])[1], 1,
             "--overwrite", (FEATURES,)),
        Case("extract: manifest bytes 'lots'", lambda w: (manifest_edit(
            w, lambda d: d["shards"][0].update(bytes="lots")), [
            "extract", "list.csv", FEATURES, "--shards", "2", *EXTRACT])[1], 1,
             "malformed manifest", (FEATURES,)),
        Case("extract: manifest NaN features", lambda w: (manifest_edit(
            w, lambda d: d["shards"][0].update(num_features=float("nan"))), [
            "extract", "list.csv", FEATURES, "--shards", "2", *EXTRACT])[1], 1,
             "malformed manifest", (FEATURES,)),
        Case("extract: garbage plan", lambda w: (write(w / FEATURES / "plan.json", "[]"), [
            "extract", "list.csv", FEATURES, "--shards", "2", *EXTRACT])[1], 1,
             "--overwrite", (FEATURES,)),
        Case("extract: manifest without a plan", lambda w: ((w / FEATURES / "plan.json").unlink(), [
            "extract", "list.csv", FEATURES, "--shards", "2", *EXTRACT])[1], 1,
             "without a plan.json", (FEATURES,)),
        Case("extract: resume with other shards", lambda w: [
            "extract", "list.csv", FEATURES, "--shards", "3", *EXTRACT], 1,
             "shards: 2 then, 3 now", (FEATURES,)),
        Case("extract: resume with another config", lambda w: [
            "extract", "list.csv", FEATURES, "--shards", "2", *EXTRACT, "--max-side", "300"], 1,
             "max_side", (FEATURES,)),
        Case("extract: resume with other images", lambda w: [
            "extract", write(w / "fewer.csv", "\n".join((w / "list.csv").read_text().splitlines()[:-2])),
            FEATURES, "--shards", "2", *EXTRACT], 1, "input images", (FEATURES,)),
        Case("extract: folder locked by a live run", lambda w: [
            "extract", "list.csv", FEATURES, "--shards", "2", *EXTRACT], 1,
             "another delfx extract is writing", (FEATURES,), hold_lock=FEATURES),
        Case("extract: a shard file missing (redone)", lambda w: ((w / SHARD0).unlink(), [
            "extract", "list.csv", FEATURES, "--shards", "2", *EXTRACT])[1], 0, "", (FEATURES,)),
        Case("extract: a shard damaged (redone)", lambda w: (flip_descriptors(w / SHARD0), [
            "extract", "list.csv", FEATURES, "--shards", "2", *EXTRACT])[1], 0, "", (FEATURES,)),
        Case("extract: manifest path escaping the folder (redone)", lambda w: (manifest_edit(
            w, lambda d: d["shards"][0].update(file="../list.csv")), [
            "extract", "list.csv", FEATURES, "--shards", "2", *EXTRACT])[1], 0, "", (FEATURES,)),
        Case("extract: leftover partial file (cleaned)", lambda w: (
            write(w / FEATURES / "shard-00000-of-00002.h5.partial-123", "x"), [
                "extract", "list.csv", FEATURES, "--shards", "2", *EXTRACT])[1], 0, "", (FEATURES,)),
        Case("extract: --overwrite keeps a user's file", lambda w: (
            write(w / FEATURES / "notes.txt", "mine"), [
                "extract", "list.csv", FEATURES, "--shards", "2", *EXTRACT, "--overwrite"])[1], 0,
             "", tuple(f"{FEATURES}/{n}" for n in ("manifest.json", "plan.json",
                                                   "extract_report.json", "shard-00000-of-00002.h5",
                                                   "shard-00001-of-00002.h5"))),
    ]
    return cases


def _broken_image_cases() -> list[Case]:
    from tests.support.broken_images import write_broken_images
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        kinds = sorted(write_broken_images(Path(tmp), min_side=16))
    return [Case(f"extract image: {name}", lambda w, n=name: [
        "extract", w / "broken" / _folder(n), "out", "--shards", "1", *EXTRACT], 0, "", ("out",))
        for name in kinds]


def _store_cases() -> list[Case]:
    damage: dict[str, tuple[Callable[[Path], object], str]] = {
        "not a feature set": (lambda w: None, "no manifest.json"),
        "manifest garbage": (lambda w: write(w / FEATURES / "manifest.json", "{"), "unreadable manifest"),
        "manifest empty": (lambda w: write(w / FEATURES / "manifest.json", ""), "unreadable manifest"),
        "manifest other format": (lambda w: manifest_edit(w, lambda d: d.update(format="x")), "not a delfx manifest"),
        "manifest newer schema": (lambda w: manifest_edit(w, lambda d: d.update(schema_version=99)), "schema version 99"),
        "manifest shards not a list": (lambda w: manifest_edit(w, lambda d: d.update(shards={})), "malformed"),
        "manifest bytes 'lots'": (lambda w: manifest_edit(w, lambda d: d["shards"][0].update(bytes="lots")), "malformed"),
        "manifest NaN dim": (lambda w: manifest_edit(w, lambda d: d.update(descriptor_dim=float("nan"))), "malformed"),
        "manifest bad digest": (lambda w: manifest_edit(w, lambda d: d["shards"][0].update(sha256="zz")), "malformed"),
        "manifest index out of range": (lambda w: manifest_edit(w, lambda d: d["shards"][0].update(index=9)), "malformed"),
        "shard truncated": (lambda w: write(w / SHARD0, (w / SHARD0).read_bytes()[:5000]), "size"),
        "shard bytes flipped": (lambda w: flip_descriptors(w / SHARD0), "sha256 differs"),
        "shard missing": (lambda w: (w / SHARD0).unlink(), "missing"),
        "shard replaced by garbage": (lambda w: write(w / SHARD0, b"\0" * 100), "size"),
        "manifest path escapes": (lambda w: manifest_edit(w, lambda d: d["shards"][0].update(file="../list.csv")), "escapes"),
        "manifest absolute path": (lambda w: manifest_edit(w, lambda d: d["shards"][0].update(file="/etc/passwd")), "escapes"),
        "shard symlinked outside": (lambda w: symlink_out(w / SHARD0, w / "elsewhere.h5"), "outside"),
    }
    cases = []
    for name, (harm, message) in damage.items():
        target = "other_dir" if name == "not a feature set" else FEATURES
        for command in ("inspect", "verify"):
            def setup(w, harm=harm, command=command, target=target):
                if target == "other_dir":
                    (w / "other_dir").mkdir()
                harm(w)
                return [command, target]
            cases.append(Case(f"{command}: {name}", setup, 1, message))
    return cases


def _index_cases() -> list[Case]:
    def foreign(w):
        write(w / "mine" / "thesis.tex", "mine")
        return w / "mine"
    cases = [
        Case("build-index: into the feature set", lambda w: ["build-index", FEATURES, FEATURES, "--overwrite"], 1, "feature set"),
        Case("build-index: into a folder holding it", lambda w: ["build-index", FEATURES, ".", "--overwrite"], 1, "feature set"),
        Case("build-index: into a user's folder", lambda w: ["build-index", FEATURES, foreign(w)], 1, "not empty"),
        Case("build-index: --overwrite a user's folder", lambda w: ["build-index", FEATURES, foreign(w), "--overwrite"], 1, "not a delfx index"),
        Case("build-index: --overwrite an index holding a user's file", lambda w: (
            write(w / INDEX / "notes.txt", "mine"), ["build-index", FEATURES, INDEX, "--overwrite"])[1], 1, "notes.txt"),
        Case("build-index: bad factory", lambda w: ["build-index", FEATURES, "new", "--factory", "Bogus"], 1, "factory", ("new",)),
        Case("build-index: damaged features", lambda w: (flip_descriptors(w / SHARD0), ["build-index", FEATURES, "new"])[1], 1, "sha256 differs", ("new",)),
        Case("build-index: not a feature set", lambda w: ["build-index", write(w / "x" / "a.txt", "x").parent, "new"], 1, "no manifest.json", ("new",)),
        Case("build-index: --update of a non-index", lambda w: ["build-index", FEATURES, foreign(w), "--update"], 1, "not a delfx index"),
        Case("build-index: --update an index holding a user's file", lambda w: (
            write(w / INDEX / "notes.txt", "mine"), ["build-index", FEATURES, INDEX, "--update"])[1], 1, "notes.txt"),
        Case("build-index: --nprobe 0", lambda w: ["build-index", FEATURES, "new", "--nprobe", "0"], 2, "", ("new",)),
        Case("build-index: --train-size 0", lambda w: ["build-index", FEATURES, "new", "--train-size", "0"], 2, "", ("new",)),
        Case("build-index: --overwrite an index (fine)", lambda w: ["build-index", FEATURES, INDEX, "--overwrite"], 0, "", (INDEX,)),
    ]
    from tests.index.test_index_safety import DAMAGE
    for name, (harm, message) in sorted(DAMAGE.items()):
        cases.append(Case(f"search: {name}", lambda w, h=harm: (h(w / INDEX), [
            "search", INDEX, FEATURES, FEATURES])[1], 1, message.split()[0]))
    cases += [
        Case("search: queries without images", lambda w: ["search", INDEX, FEATURES, write(w / "q" / "a.txt", "x").parent], 1, "no images found"),
        Case("search: queries of another model", lambda w: ["search", INDEX, FEATURES, other_feature_set(w)], 1, "extracted with synthetic"),
        Case("search: index of other features", lambda w: (
            __import__("delfx.index.faiss_index", fromlist=["x"]).build_index(other_feature_set(w), w / "idx2"),
            ["search", "idx2", FEATURES, FEATURES])[1], 1, "built from model synthetic"),
        Case("search: gallery not a feature set", lambda w: ["search", INDEX, write(w / "g" / "a", "x").parent, FEATURES], 1, "no manifest.json"),
        Case("search: --k 0", lambda w: ["search", INDEX, FEATURES, FEATURES, "--k", "0"], 2),
        Case("search: --top 0", lambda w: ["search", INDEX, FEATURES, FEATURES, "--top", "0"], 2),
        Case("search: --threshold 0", lambda w: ["search", INDEX, FEATURES, FEATURES, "--threshold", "0"], 2),
        Case("search: --out is a folder", lambda w: ["search", INDEX, FEATURES, FEATURES, "--out", INDEX], 2),
        Case("search: --global-shortlist without a global index", lambda w: [
            "search", INDEX, FEATURES, FEATURES, "--global-shortlist"], 1, "no global index"),
        Case("search: query images extracted on the fly (fine)", lambda w: [
            "search", INDEX, FEATURES, "data/images/china", "--out", "r.jsonl"], 0, "", ("r.jsonl",)),
    ]
    return cases


def _train_cases() -> list[Case]:
    def train(w, labels="labels.csv", *extra):
        return ["train", FEATURES, labels, "clf", *extra]
    cases = [
        Case("train: labels without landmark_id", lambda w: train(w, write(w / "l.csv", "id,label\na,1\n")), 1, "no column", ("clf",)),
        Case("train: labels not UTF-8", lambda w: train(w, write(w / "l.csv", "id,landmark_id\ncaf\xe9,1\n".encode("latin-1"))), 1, "cannot read labels", ("clf",)),
        Case("train: labels empty", lambda w: train(w, write(w / "l.csv", "")), 1, "no column", ("clf",)),
        Case("train: labels of no image", lambda w: train(w, write(w / "l.csv", "id,landmark_id\nx,1\ny,2\n")), 1, "none of the", ("clf",)),
        Case("train: one class", lambda w: train(w, write(w / "l.csv", "id,landmark_id\nchina/view_00,1\nchina/view_01,1\n")), 1, "at least 2", ("clf",)),
        Case("train: one id two labels", lambda w: train(w, write(w / "l.csv", "id,landmark_id\na,1\na,2\n")), 1, "labelled both", ("clf",)),
        Case("train: into a user's folder", lambda w: (write(w / "clf" / "mine.txt", "x"), train(w))[1], 1, "not empty"),
        Case("train: --overwrite a user's folder", lambda w: (write(w / "clf" / "mine.txt", "x"), train(w, "labels.csv", "--overwrite"))[1], 1, "not a delfx"),
        Case("train: --overwrite a classifier holding a user's file", lambda w: (
            write(w / CLASSIFIER / "notes.txt", "x"), ["train", FEATURES, "labels.csv", CLASSIFIER, "--overwrite"])[1], 1, "notes.txt"),
        Case("train: --epochs 0", lambda w: train(w, "labels.csv", "--epochs", "0"), 1, "epochs must be", ("clf",)),
        Case("train: --dropout 1.5", lambda w: train(w, "labels.csv", "--dropout", "1.5"), 1, "dropout", ("clf",)),
        Case("train: --activation bogus", lambda w: train(w, "labels.csv", "--activation", "bogus", "--epochs", "1"), 1, "unknown activation", ("clf",)),
        Case("train: --validation-share 1", lambda w: train(w, "labels.csv", "--validation-share", "1"), 1, "validation_share", ("clf",)),
        Case("train: --units 0", lambda w: train(w, "labels.csv", "--units", "0"), 1, "units", ("clf",)),
        Case("train: --head for a GeM model", lambda w: ["train", "list.csv", "labels.csv", "g", "--model", "gem-vgg16", "--head", "pool"], 2, "", ("g",)),
        Case("train: --image-size for the classifier", lambda w: train(w, "labels.csv", "--image-size", "64"), 2, "", ("clf",)),
        Case("train: gem-resnet50 without weights", lambda w: ["train", "list.csv", "labels.csv", "g", "--model", "gem-resnet50"], 1, "needs ResNet50 weights", ("g",)),
        Case("train: GeM on a feature set", lambda w: ["train", FEATURES, "labels.csv", "g", "--model", "gem-vgg16"], 1, "no images found", ("g",)),
        Case("train: a damaged feature set", lambda w: (flip_descriptors(w / SHARD0), train(w))[1], 1, "sha256 differs", ("clf",)),
    ]
    return cases


def _classify_cases() -> list[Case]:
    def classify(w, *extra, labels="labels.csv", queries=FEATURES):
        return ["classify", FEATURES, labels, queries, "--out", "sub.csv", *extra]
    retrieval = ["--mode", "retrieval", "--index", INDEX]
    out = ("sub.csv",)
    cases = [
        Case("classify: labels of no gallery image", lambda w: classify(w, *retrieval, labels=write(w / "l.csv", "id,landmark_id\nx,1\n")), 1, "no landmark label", out),
        Case("classify: labels without landmark_id", lambda w: classify(w, *retrieval, labels=write(w / "l.csv", "id\nx\n")), 1, "no column", out),
        Case("classify: fused without a classifier", lambda w: classify(w, "--index", INDEX), 1, "needs --classifier", out),
        Case("classify: retrieval without an index", lambda w: classify(w, "--mode", "retrieval"), 1, "needs --index", out),
        Case("classify: garbage calibration", lambda w: classify(w, *retrieval, "--calibration", write(w / "c.json", "nope")), 1, "unreadable delfx calibration", out),
        Case("classify: calibration of another mode", lambda w: classify(w, "--index", INDEX, "--classifier", CLASSIFIER, "--calibration", "calibration.json"), 1, "calibration is for features", out),
        Case("classify: calibration of another format", lambda w: classify(w, *retrieval, "--calibration", "submission.csv"), 1, "unreadable delfx calibration", out),
        Case("classify: queries without images", lambda w: classify(w, *retrieval, queries=write(w / "q" / "a.txt", "x").parent), 1, "no images found", out),
        Case("classify: queries of another model", lambda w: classify(w, *retrieval, queries=other_feature_set(w)), 1, "extracted with synthetic", out),
        Case("classify: classifier folder of junk", lambda w: classify(w, "--index", INDEX, "--classifier", write(w / "junk" / "config.json", "{}").parent), 1, "not a delfx classifier", out),
        Case("classify: classifier of other features", lambda w: (
            write(w / "clf2" / "x", ""), json_edit_copy(w, CLASSIFIER, "clf2", lambda d: d["features"].update(model_hash="f" * 64)),
            classify(w, "--index", INDEX, "--classifier", "clf2"))[2], 1, "trained on", out),
        Case("classify: index of other features", lambda w: (
            __import__("delfx.index.faiss_index", fromlist=["x"]).build_index(other_feature_set(w), w / "idx2"),
            classify(w, "--mode", "retrieval", "--index", "idx2"))[1], 1, "built from model synthetic", out),
        Case("classify: --global-model junk", lambda w: classify(w, *retrieval, "--global-model", write(w / "gm" / "a", "").parent), 1, "not a delfx global model", out),
        Case("classify: shortlist without global descriptors", lambda w: classify(w, "--mode", "shortlist"), 1, "no global descriptors", out),
        Case("classify: --top-k 0", lambda w: classify(w, *retrieval, "--top-k", "0"), 2, "", out),
        Case("classify: --shortlist 0", lambda w: classify(w, *retrieval, "--shortlist", "0"), 2, "", out),
        Case("classify: --min-score nan", lambda w: classify(w, *retrieval, "--min-score", "nan"), 2, "", out),
        Case("classify: --out is a folder", lambda w: ["classify", FEATURES, "labels.csv", FEATURES, "--out", INDEX, *retrieval], 2),
        Case("classify: retrieval with labels partly in the gallery (fine)", lambda w: classify(
            w, *retrieval, labels=write(w / "l.csv", (w / "labels.csv").read_text() + "ghost,1\n")), 0, "", out),
    ]
    return cases


def json_edit_copy(w: Path, src: str, dst: str, change) -> None:
    shutil.rmtree(w / dst, ignore_errors=True)
    shutil.copytree(w / src, w / dst)
    json_edit(w / dst / "config.json", change)


def _evaluate_cases() -> list[Case]:
    def sub(content):
        return lambda w: ["evaluate", write(w / "s.csv", content), "labels.csv"]
    cases = [
        Case("evaluate: duplicate ids", sub("id,landmarks\nchina/view_00,china 0.9\nchina/view_00,china 0.8\n"), 1, "appears twice"),
        Case("evaluate: nan score", sub("id,landmarks\nchina/view_00,china nan\n"), 1, "finite"),
        Case("evaluate: inf score", sub("id,landmarks\nchina/view_00,china inf\n"), 1, "finite"),
        Case("evaluate: negative score", sub("id,landmarks\nchina/view_00,china -1\n"), 1, "finite"),
        Case("evaluate: two predictions", sub("id,landmarks\nchina/view_00,a 0.9 b 0.1\n"), 1, "one 'label score'"),
        Case("evaluate: label without score", sub("id,landmarks\nchina/view_00,china\n"), 1, "one 'label score'"),
        Case("evaluate: score not a number", sub("id,landmarks\nchina/view_00,china high\n"), 1, "not a number"),
        Case("evaluate: empty id", sub("id,landmarks\n,china 0.9\n"), 1, "empty id"),
        Case("evaluate: not UTF-8", sub("id,landmarks\ncaf\xe9,china 0.9\n".encode("latin-1")), 1, "not UTF-8"),
        Case("evaluate: other columns", sub("id;landmarks\n"), 1, "Kaggle columns"),
        Case("evaluate: empty file", sub(""), 1, "Kaggle columns"),
        Case("evaluate: id not in the truth", sub("id,landmarks\nzz,china 0.9\n"), 1, "not in the truth file"),
        Case("evaluate: truth without landmark_id", lambda w: ["evaluate", "submission.csv", write(w / "t.csv", "id,label\na,1\n")], 1, "no column"),
        Case("evaluate: truth not UTF-8", lambda w: ["evaluate", "submission.csv", write(w / "t.csv", "id,landmark_id\ncaf\xe9,1\n".encode("latin-1"))], 1, "cannot read labels"),
        Case("evaluate: truth without landmarks", lambda w: ["evaluate", write(w / "s.csv", "id,landmarks\nn1,\n"), write(w / "t.csv", "id,landmark_id\nn1,\n")], 1, "undefined"),
        Case("evaluate: header only (fine: nothing answered)", sub("id,landmarks\n"), 0),
        Case("evaluate: --report into a file", lambda w: ["evaluate", "submission.csv", "labels.csv", "--report", "list.csv"], 2),
    ]
    return cases


def _other_command_cases() -> list[Case]:
    china = "data/images/china"
    return [
        Case("match: a broken image", lambda w: [
            "match", f"{china}/view_00.jpg", write(w / "b.jpg", b"\xff\xd8\xff garbage"),
            "--model", "rootsift"], 1, "b.jpg"),
        Case("match: an empty file", lambda w: [
            "match", f"{china}/view_00.jpg", write(w / "e.jpg", b""), "--model", "rootsift"], 1,
             "zero bytes"),
        Case("match: --threshold -1", lambda w: [
            "match", f"{china}/view_00.jpg", f"{china}/view_01.jpg", "--threshold", "-1"], 2),
        Case("fit-pca: no images", lambda w: [
            "fit-pca", write(w / "e" / "a.txt", "x").parent, "--out", "p.h5", "--model", "rootsift"],
             1, "no images found", ("p.h5",)),
        Case("fit-pca: --dim 0", lambda w: ["fit-pca", "list.csv", "--out", "p.h5", "--dim", "0"],
             2, "", ("p.h5",)),
        Case("fit-pca: the official module", lambda w: [
            "fit-pca", "list.csv", "--out", "p.h5", "--model", "tfhub"], 1,
             "fit-pca needs a built-in model", ("p.h5",)),
        Case("fit-pca: more components than dimensions", lambda w: [
            "fit-pca", "list.csv", "--out", "p.h5", "--model", "rootsift", "--dim", "500"], 1,
             "PCA dimension", ("p.h5",)),
        Case("sample-data: into a user's folder", lambda w: [
            "sample-data", write(w / "mine" / "a.txt", "x").parent], 1, ""),
        Case("sample-data: --overwrite a user's folder keeps the user's file", lambda w: [
            "sample-data", write(w / "mine" / "a.txt", "x").parent, "--overwrite"], 0, "",
             tuple(f"mine/{n}" for n in ("images", "labels.csv", "train.csv", "query.csv",
                                         "views.json", "README.md", ".delfx-sample-data.json"))),
        Case("export-model: --overwrite a user's folder", lambda w: [
            "export-model", write(w / "mine" / "a.txt", "x").parent, "--overwrite"], 1,
             "not a delfx export"),
        Case("export-model: rootsift", lambda w: ["export-model", "exp", "--model", "rootsift"], 1,
             "export-model exports the built-in DELF models", ("exp",)),
        Case("export-model: delf-hybrid", lambda w: ["export-model", "exp", "--model",
                                                     "delf-hybrid"], 1, "cannot export", ("exp",)),
    ]


CASES = (_extract_cases() + _broken_image_cases() + _store_cases() + _index_cases()
         + _train_cases() + _classify_cases() + _evaluate_cases() + _other_command_cases())


def test_there_are_at_least_150_cases():
    assert len(CASES) >= 150, len(CASES)
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(world_template, tmp_path, case, monkeypatch):
    world = tmp_path / "w"
    shutil.copytree(world_template, world, symlinks=True)
    monkeypatch.chdir(world)
    args = [str(a) for a in case.setup(world)]
    before = _snapshot(world, case.outputs)
    if case.hold_lock:
        from delfx.extractor.plan import RunLock
        lock = RunLock(world / case.hold_lock).acquire()
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        if case.hold_lock:
            lock.release()
    output = result.output
    assert "Traceback" not in output, output
    assert "unexpected error" not in output, output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{type(result.exception).__name__} reached the user: {output}")
    expected = case.exit if isinstance(case.exit, tuple) else (case.exit,)
    assert result.exit_code in expected, output
    if case.message:
        assert case.message in output, output
    if result.exit_code:
        assert len([line for line in output.splitlines() if line.startswith("Error")]) <= 1
    assert _snapshot(world, case.outputs) == before, "a file outside the outputs changed"
