"""An index in parts (delfx/index/parts.py): the merged k-NN of its parts are the single index's,
in process and with one real Ray actor per part; its files are checked like a single index's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from delfx.errors import DelfxError
from delfx.index.faiss_index import GalleryIndex, build_index, update_index
from delfx.index.parts import IndexParts, build_index_parts, merge, open_index
from delfx.store import FeatureSet
from delfx.store.synthetic import write_synthetic_feature_set
from tests.support.ray_cluster import two_node_cluster


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts") / "features"
    write_synthetic_feature_set(root, num_images=30, num_shards=6, features_per_image=(40, 80),
                                seed=5)
    return root


@pytest.fixture(scope="module")
def queries(gallery):
    with FeatureSet(gallery) as fs:
        own = np.concatenate([fs.get(i).descriptors[:5] for i in (0, 7, 19)])
    noise = np.random.default_rng(1).standard_normal((40, 40)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return np.concatenate([own, noise])


def _keys(index, answer):
    """(image id, keypoint row) per neighbour: comparable across image tables."""
    _, images, rows = answer
    ids = index.mapping.image_ids
    return [[(ids[i], int(r)) if i >= 0 else None for i, r in zip(ri, rr)]
            for ri, rr in zip(images, rows)]


def _assert_same_neighbours(a, index_a, b, index_b):
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
    ka, kb = _keys(index_a, a), _keys(index_b, b)
    for row, (x, y) in enumerate(zip(ka, kb)):
        if x != y:  # only a tie in distance may swap neighbours
            d = a[0][row]
            swapped = [j for j in range(len(x)) if x[j] != y[j]]
            assert all(np.isclose(d[j], d[j - 1], atol=1e-6) or np.isclose(d[j], d[min(j + 1, len(d) - 1)], atol=1e-6)
                       for j in swapped), (row, x, y)


@pytest.mark.parametrize("factory", ["Flat", "IVF16,SQ8"])
def test_parts_merge_to_the_single_index(gallery, queries, tmp_path, factory):
    build_index_parts(gallery, tmp_path / "one", 1, factory=factory, nprobe=4)
    build_index_parts(gallery, tmp_path / "three", 3, factory=factory, nprobe=4)
    one, three = IndexParts(tmp_path / "one"), IndexParts(tmp_path / "three")
    assert three.num_parts == 3 and three.meta.num_vectors == one.meta.num_vectors
    assert sorted(three.mapping.image_ids) == sorted(one.mapping.image_ids)
    _assert_same_neighbours(one.search(queries, 10), one, three.search(queries, 10), three)
    if factory == "Flat":  # and the one-part index is the ordinary single index
        build_index(gallery, tmp_path / "single", factory="Flat")
        single = GalleryIndex(tmp_path / "single")
        _assert_same_neighbours(single.search(queries, 10), single,
                                three.search(queries, 10), three)


def test_merge_keeps_the_nearest_and_shifts_image_rows():
    a = (np.array([[0.1, 0.5]]), np.array([[0, 1]]), np.array([[3, 4]]))
    b = (np.array([[0.2, 9.0]]), np.array([[0, -1]]), np.array([[7, -1]]))
    d, images, rows = merge([a, b], [0, 2], 3)
    np.testing.assert_array_equal(d, [[0.1, 0.2, 0.5]])
    np.testing.assert_array_equal(images, [[0, 2, 1]])
    np.testing.assert_array_equal(rows, [[3, 7, 4]])


def test_search_on_parts_equals_search_on_the_single_index(gallery, tmp_path):
    from delfx.index.search import run_search
    build_index(gallery, tmp_path / "single", factory="Flat")
    build_index_parts(gallery, tmp_path / "parts", 2, factory="Flat")
    single = list(run_search(tmp_path / "single", gallery, gallery, exclude_self=True))
    parts = list(run_search(tmp_path / "parts", gallery, gallery, exclude_self=True))
    assert [(q, [r.to_json() for r in rs]) for q, rs in single] == \
        [(q, [r.to_json() for r in rs]) for q, rs in parts]


def test_refusals_and_checks(gallery, tmp_path):
    with pytest.raises(DelfxError, match="fewer than the 7 parts"):
        build_index_parts(gallery, tmp_path / "x", 7, factory="Flat")
    build_index_parts(gallery, tmp_path / "p", 2, factory="Flat")
    with pytest.raises(DelfxError, match="--update adds to a single index"):
        update_index(gallery, tmp_path / "p")
    with pytest.raises(DelfxError, match="searching on Ray needs an index in parts"):
        build_index(gallery, tmp_path / "s", factory="Flat")
        open_index(tmp_path / "s", ray={})
    # a folder name from parts.json is a fixed pattern, never a path
    doc = json.loads((tmp_path / "p" / "parts.json").read_text())
    doc["parts"][1]["folder"] = "../s"
    (tmp_path / "p" / "parts.json").write_text(json.dumps(doc))
    with pytest.raises(DelfxError, match="malformed index-in-parts"):
        IndexParts(tmp_path / "p")
    # a part that is not the one parts.json was written with
    build_index_parts(gallery, tmp_path / "q", 2, factory="Flat")
    build_index_parts(gallery, tmp_path / "r", 2, factory="IVF16,SQ8")
    meta = tmp_path / "q" / "part-00001-of-00002" / "index.json"
    meta.write_bytes((tmp_path / "r" / "part-00001-of-00002" / "index.json").read_bytes())
    with pytest.raises(DelfxError, match="not the part"):
        IndexParts(tmp_path / "q")


def test_overwrite_replaces_only_delfx_own_parts(gallery, tmp_path):
    build_index_parts(gallery, tmp_path / "p", 2, factory="Flat")
    build_index_parts(gallery, tmp_path / "p", 3, factory="Flat", overwrite=True)
    assert len(IndexParts(tmp_path / "p").data["parts"]) == 3
    build_index(gallery, tmp_path / "p", factory="Flat", overwrite=True)  # parts -> single
    assert GalleryIndex(tmp_path / "p").meta.num_images == 30
    build_index_parts(gallery, tmp_path / "p", 2, factory="Flat", overwrite=True)
    (tmp_path / "p" / "part-00000-of-00002" / "notes.txt").write_text("mine")
    with pytest.raises(DelfxError, match="not the index's"):
        build_index_parts(gallery, tmp_path / "p", 2, factory="Flat", overwrite=True)
    assert (tmp_path / "p" / "part-00000-of-00002" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_search_on_ray_actors_equals_in_process(gallery, tmp_path):
    """`delfx search --ray --out` (a local Ray instance this test's delfx starts, one actor
    per part shared by the job's workers) writes exactly what the in-process search prints."""
    build_index_parts(gallery, tmp_path / "parts", 3, factory="IVF16,SQ8", nprobe=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    cmd = [sys.executable, "-m", "delfx", "search", str(tmp_path / "parts"), str(gallery),
           str(gallery), "--exclude-self"]
    local = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    on_ray = subprocess.run(cmd + ["--ray", "--out", str(tmp_path / "ray.jsonl"), "--json",
                                   "--chunk-size", "4"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert local.returncode == 0, local.stderr[-2000:]
    assert on_ray.returncode == 0, on_ray.stderr[-2000:]
    assert json.loads(on_ray.stdout)["workers"] == 2  # the cluster's 2 CPUs; parts claim none
    assert (tmp_path / "ray.jsonl").read_text() == local.stdout
    assert len(local.stdout.splitlines()) >= 30


SEARCH_ON = """
import json, sys
import numpy as np
from delfx.index.parts import IndexParts
parts = IndexParts(sys.argv[1], ray={"address": sys.argv[2]})
local = IndexParts(sys.argv[1])
q = np.load(sys.argv[3])
a, b = parts.search(q, 10), local.search(q, 10)
print(json.dumps({"nodes": parts.nodes, "same": all(np.array_equal(x, y) for x, y in zip(a, b))}))
"""


@pytest.mark.slow
def test_parts_on_a_two_node_cluster(gallery, queries, tmp_path):
    """A head and a second node as separate processes (token authentication on, as `ray start
    --head` has by default): the two parts load on different nodes and merge to the in-process
    answer exactly."""
    build_index_parts(gallery, tmp_path / "parts", 2, factory="IVF16,SQ8", nprobe=4)
    np.save(tmp_path / "q.npy", queries)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_USAGE_STATS_ENABLED="0")
    with two_node_cluster(env) as address:
        proc = subprocess.run([sys.executable, "-c", SEARCH_ON, str(tmp_path / "parts"), address,
                               str(tmp_path / "q.npy")], capture_output=True, text=True,
                              env={**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.splitlines()[-1])
        assert result["same"] and len(set(result["nodes"])) == 2, result


def test_cli_builds_parts_and_refuses_mixed_options(gallery, tmp_path):
    from click.testing import CliRunner

    from delfx.cli import cli
    from tests.support.cli import invoke
    out = invoke("build-index", gallery, tmp_path / "p", "--parts", "2", "--factory", "Flat")
    assert "in 2 parts" in out and IndexParts(tmp_path / "p").num_parts == 2
    searched = invoke("search", tmp_path / "p", gallery, gallery, "--exclude-self")
    assert len(searched.splitlines()) >= 30
    runner = CliRunner()
    refused = runner.invoke(cli, ["build-index", str(gallery), str(tmp_path / "p"), "--parts",
                                  "2", "--update"])
    assert refused.exit_code == 2 and "--update adds to a single index" in refused.output
    refused = runner.invoke(cli, ["search", str(tmp_path / "p"), str(gallery), str(gallery),
                                  "--address", "127.0.0.1:1"])
    assert refused.exit_code == 2 and "--address joins a Ray cluster for --ray" in refused.output
