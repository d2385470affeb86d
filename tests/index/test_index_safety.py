"""build-index never deletes what is not its own, swaps a new index in atomically, and every
part of an index folder is checked when it is loaded."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from delfx.cli import cli
from delfx.errors import DelfxError
from delfx.index.faiss_index import GalleryIndex, build_index
from delfx.store.synthetic import write_synthetic_feature_set


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    write_synthetic_feature_set(root / "features", num_images=30, num_shards=2)
    build_index(root / "features", root / "index")
    return root


@pytest.fixture()
def index_copy(built, tmp_path):
    shutil.copytree(built / "index", tmp_path / "index")
    return built / "features", tmp_path / "index"


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_overwrite_never_deletes_the_feature_set_or_a_users_folder(built, tmp_path):
    features = tmp_path / "f" / "features"
    shutil.copytree(built / "features", features)
    (tmp_path / "f" / "notes.txt").write_text("mine")
    before = _tree(tmp_path / "f")
    # the reproduction: the index folder holds the feature set
    result = _run("build-index", features, tmp_path / "f", "--overwrite")
    assert result.exit_code == 1 and "holds) the feature set" in result.output
    result = _run("build-index", features, features, "--overwrite")
    assert result.exit_code == 1 and "holds) the feature set" in result.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("mine too")
    result = _run("build-index", features, other, "--overwrite")
    assert result.exit_code == 1 and "not a delfx index" in result.output
    assert _tree(tmp_path / "f") == before and (other / "thesis.tex").read_text() == "mine too"


def test_overwrite_of_an_index_with_a_foreign_file_is_refused(index_copy):
    features, index = index_copy
    (index / "notes.txt").write_text("mine")
    result = _run("build-index", features, index, "--overwrite")
    assert result.exit_code == 1 and "notes.txt" in result.output
    result = _run("build-index", features, index, "--update")
    assert result.exit_code in (0, 1) and (index / "notes.txt").read_text() == "mine"


def test_a_failed_rebuild_leaves_the_old_index_intact(index_copy):
    features, index = index_copy
    before = _tree(index)
    result = _run("build-index", features, index, "--overwrite", "--factory", "IVF9,Bogus")
    assert result.exit_code == 1 and "factory" in result.output
    assert _tree(index) == before
    result = _run("build-index", features, index, "--overwrite", "--factory", "Flat")
    assert result.exit_code == 0 and GalleryIndex(index).meta.factory == "Flat"
    assert not [p for p in index.parent.iterdir() if p.name.startswith(".index.")]


def _flip(path, at=0.5, count=64):
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _mapping(path, **replace):
    with h5py.File(path, "r") as f:
        arrays = {k: f[k][()] for k in ("image_ids", "image", "row")}
    arrays.update(replace)
    path.unlink()
    with h5py.File(path, "w") as f:
        f.attrs["format"], f.attrs["format_version"] = "delfx-index-mapping", 1
        for k, v in arrays.items():
            f.create_dataset(k, data=v)


def _meta(index, **changes):
    data = json.loads((index / "index.json").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    (index / "index.json").write_text(json.dumps(data))


DAMAGE = {
    "index.faiss bytes flipped": (lambda i: _flip(i / "index.faiss"), "sha256 differs"),
    "index.faiss truncated": (lambda i: (i / "index.faiss").write_bytes(
        (i / "index.faiss").read_bytes()[:100]), "sha256 differs"),
    "index.faiss missing": (lambda i: (i / "index.faiss").unlink(), "missing"),
    "mapping.h5 missing": (lambda i: (i / "mapping.h5").unlink(), "missing"),
    "mapping.h5 garbage": (lambda i: (i / "mapping.h5").write_bytes(b"garbage"), "sha256 differs"),
    "index.json missing": (lambda i: (i / "index.json").unlink(), "not a delfx index"),
    "index.json garbage": (lambda i: (i / "index.json").write_text("{"), "unreadable delfx index"),
    "index.json missing a key": (lambda i: _meta(i, dim=None), "malformed index metadata"),
    "index.json non-integer shard key": (lambda i: _meta(i, shards={"x": "0" * 64}),
                                         "malformed index metadata"),
    "index.json dim of another type": (lambda i: _meta(i, dim="40"), "malformed index metadata"),
    "index.json other format": (lambda i: _meta(i, format="delfx-classifier"), "not a delfx index"),
}


def _rehash_files(index):
    from delfx.digests import file_sha256
    data = json.loads((index / "index.json").read_text())
    data["files"] = {n: file_sha256(index / n) for n in ("index.faiss", "mapping.h5")}
    (index / "index.json").write_text(json.dumps(data))


# Damage that passes the file checksums (the digests re-written, as a broken tool would):
CONSISTENCY = {
    "mapping ids out of range": (lambda i: _mapping(i / "mapping.h5", image=np.full(
        GalleryIndex(i).index.ntotal, 10_000, np.int32)), "outside the"),
    "mapping has too few ids": (lambda i: _mapping(i / "mapping.h5", image_ids=np.array(
        [b"a"], dtype=object), image=np.zeros(GalleryIndex(i).index.ntotal, np.int32)),
        "images, index.json says"),
    "mapping shorter than the index": (lambda i: _mapping(i / "mapping.h5", image=np.zeros(
        3, np.int32), row=np.zeros(3, np.int32)), "the mapping 3"),
    "factory does not match the file": (lambda i: _meta(i, factory="IVF16,PQ20"),
                                         "does not build this index"),
    "factory is not a factory": (lambda i: _meta(i, factory="Bogus"), "not a FAISS factory"),
    "vector count": (lambda i: _meta(i, num_vectors=1), "index.json says 1"),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_index_folders_give_one_line(index_copy, name):
    features, index = index_copy
    damage, message = DAMAGE[name]
    damage(index)
    with pytest.raises(DelfxError, match=message):
        GalleryIndex(index)
    result = _run("search", index, features, features)
    assert result.exit_code == 1 and message.split()[0] in result.output


@pytest.mark.parametrize("name", sorted(CONSISTENCY))
def test_inconsistent_index_folders_give_one_line(index_copy, name):
    features, index = index_copy
    damage, message = CONSISTENCY[name]
    damage(index)
    _rehash_files(index)
    with pytest.raises(DelfxError, match=message):
        GalleryIndex(index)
