"""The command line: help is instant (no heavy imports), errors are one line, verify/inspect work."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from delfx.cli import cli
from delfx.store import shard_file_name
from delfx.store.synthetic import write_synthetic_feature_set


def _run(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_help_imports_no_heavy_library():
    code = ("import sys; from delfx.cli import main; sys.argv=['delfx','--help']\n"
            "try: main()\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('tensorflow','ray','faiss','h5py','cv2','torch','kornia') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout
    assert "sample-data" in out.stdout and "verify" in out.stdout
    assert _run("-h").exit_code == 0


def test_version_lists_libraries():
    result = _run("--version")
    names = [line.split()[0] for line in result.output.splitlines()]
    for name in ("delfx", "tensorflow", "faiss", "ray", "h5py", "numpy"):
        assert name in names
    module = subprocess.run([sys.executable, "-m", "delfx", "--version"], capture_output=True, text=True)
    assert module.returncode == 0 and module.stdout.startswith("delfx ")


def test_verify_and_inspect(tmp_path):
    write_synthetic_feature_set(tmp_path, num_images=9, num_shards=3, failed_every=3)
    result = _run("verify", str(tmp_path))
    assert result.exit_code == 0 and "OK" in result.output and "3 shard(s)" in result.output
    summary = json.loads(_run("inspect", "--json", str(tmp_path)).output)
    assert summary["images"]["failed_by_reason"] == {"corrupt": 3}
    text = _run("inspect", str(tmp_path)).output
    assert "9 (6 ok, 3 failed)" in text and "corrupt" in text
    (tmp_path / shard_file_name(1, 3)).unlink()
    result = CliRunner().invoke(cli, ["verify", str(tmp_path)])
    assert result.exit_code == 1
    assert "PROBLEM shard 1" in result.output and "missing" in result.output


def test_domain_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "delfx", "inspect", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("Error:") and "no manifest.json" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_environment_defaults(tmp_path):
    write_synthetic_feature_set(tmp_path, num_images=2)
    result = _run("inspect", str(tmp_path), env={"DELFX_INSPECT_JSON": "1"})
    assert json.loads(result.output)["images"]["total"] == 2


def test_tensorflow_import_is_quiet():
    code = ("from delfx import tf_quiet\ntf = tf_quiet.import_tensorflow()\n"
            "print(float(tf.reduce_sum(tf.ones((2, 2)))))")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("TF_CPP")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "4.0"
    assert proc.stderr.strip() == "", proc.stderr
