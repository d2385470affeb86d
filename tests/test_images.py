"""Image decoding: every supported mode to RGB uint8, EXIF orientation, typed failure reasons."""

from __future__ import annotations

import errno
import io
import os
import pickle
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, TiffImagePlugin, WebPImagePlugin

from tests.support.broken_images import (EXIF_ROTATED, MARK, MAX16, H, W, good_image_bytes, photo, png_with_header,
                           ramp16, write_broken_images, write_good_images)
from delfx.errors import DelfxError
from delfx import images
from delfx.images import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, REASONS, ImageError,
                                    decode_image, image_size, load_image)


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("good")
    return directory, write_good_images(directory)


@pytest.fixture(scope="module")
def broken_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("broken")
    return directory, write_broken_images(directory, min_side=2)


def _reason(fn, *args, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        fn(*args, **kwargs)
    assert info.value.reason in REASONS
    return info.value.reason


def _assert_rgb(a: np.ndarray, shape: tuple[int, int]) -> None:
    assert a.dtype == np.uint8 and a.shape == (*shape, 3)
    assert a.flags.c_contiguous and a.flags.writeable


# --- good images -----------------------------------------------------------------------------

def test_every_good_image_decodes_to_rgb_uint8(good_dir):
    directory, expected = good_dir
    for filename, shape in expected.items():
        a = load_image(directory / filename)
        _assert_rgb(a, shape)
        assert a.max() > a.min(), f"{filename} decoded to a flat image"


def test_decode_image_matches_load_image_and_accepts_buffers(good_dir):
    directory, expected = good_dir
    for filename in expected:
        data = (directory / filename).read_bytes()
        from_file = load_image(directory / filename)
        for buffer in (data, bytearray(data), memoryview(data)):
            np.testing.assert_array_equal(decode_image(buffer, name=filename), from_file)


def test_image_size_agrees_with_load_image(good_dir, broken_dir):
    for directory, expected in (good_dir, broken_dir):
        for filename, outcome in expected.items():
            if isinstance(outcome, tuple) or outcome == "ok":
                assert image_size(directory / filename) == load_image(directory / filename).shape[:2]


def test_image_size_reads_only_the_header(good_dir, monkeypatch):
    directory, expected = good_dir

    def no_decoding(self):
        raise AssertionError("pixels decoded")

    for cls in (ImageFile.ImageFile, TiffImagePlugin.TiffImageFile, WebPImagePlugin.WebPImageFile):
        monkeypatch.setattr(cls, "load", no_decoding)
    for filename in ("rgb.jpg", EXIF_ROTATED, "gray16.png", "rgba.png", "rgb_lzw.tif", "animated.webp"):
        assert image_size(directory / filename) == expected[filename]


def test_lossless_images_keep_their_pixels(good_dir):
    directory, _ = good_dir
    reference = photo()
    for filename in ("rgb_lzw.tif", "rgb.bmp", "rgb.ppm", "animated.png", "animated.webp"):
        np.testing.assert_array_equal(load_image(directory / filename), reference, err_msg=filename)
    gray = np.asarray(Image.fromarray(reference).convert("L"))
    np.testing.assert_array_equal(load_image(directory / "gray_L.png"), np.dstack([gray] * 3))


def test_lossy_and_converted_images_stay_close(good_dir):
    directory, _ = good_dir
    reference = photo().astype(int)
    for filename in ("rgb.jpg", "cmyk.jpg", "two_frames.mpo", "ycbcr.tif", "animated.gif"):
        error = np.abs(load_image(directory / filename).astype(int) - reference).mean()
        assert error < 8, f"{filename}: mean abs error {error}"


def test_animated_files_yield_the_first_frame(good_dir):
    directory, _ = good_dir
    for filename in ("animated.gif", "animated.webp", "animated.png", "two_frames.mpo"):
        a = load_image(directory / filename).astype(int)
        first = np.abs(a - photo(seed=0)).mean()
        second = np.abs(a - photo(seed=1)).mean()
        assert first < 8 < second, filename


def test_transparency_is_composited_over_white(good_dir):
    directory, _ = good_dir
    # Alpha ramps from 0 (left column) to 255 (right column).
    for filename, opaque in (("rgba.png", photo()), ("gray_alpha_LA.png", None),
                             ("gray_premultiplied_La.tif", None)):
        a = load_image(directory / filename)
        assert (a[:, 0] == 255).all(), filename
        if opaque is not None:
            np.testing.assert_array_equal(a[:, -1], opaque[:, -1])
    with Image.open(directory / "palette_transparency.png") as im:
        transparent = np.asarray(im) == 0
    assert transparent.any()
    a = load_image(directory / "palette_transparency.png")
    assert (a[transparent] == 255).all()
    assert not (a[~transparent] == 255).all()


def test_16_bit_images_are_scaled_not_clipped(good_dir):
    directory, _ = good_dir
    expected = ramp16() / 257
    for filename in ("gray16.png", "gray16.tif", "gray16_bigendian.tif", "gray16.pgm",
                     "gray_float.tif"):
        a = load_image(directory / filename)
        assert a[..., 0].max() == 255 and a[..., 0].min() == 0, filename
        np.testing.assert_allclose(a[..., 0], expected, atol=1, err_msg=filename)
        assert abs(a.mean() - 127.5) < 2, filename  # clipping at 255 would push this near 255
    a = load_image(directory / "rgb16.png")  # 48-bit RGB: Pillow keeps the high byte
    assert a.max() == 255 and abs(a.mean() - 127.5) < 2


def test_16_bit_scaling_from_bytes_reaches_255_for_65535():
    im = Image.fromarray(np.array([[0, 257, 32768, MAX16]], dtype=np.uint16))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    np.testing.assert_array_equal(decode_image(buf.getvalue())[0, :, 0], [0, 1, 128, 255])


# --- EXIF orientation ------------------------------------------------------------------------

def test_exif_orientation_6_transposes_and_moves_the_marked_corner(good_dir):
    directory, _ = good_dir
    a = load_image(directory / EXIF_ROTATED)
    assert a.shape == (W, H, 3)  # stored H x W, displayed rotated by 90 degrees
    inner = slice(2, MARK - 2)
    top_right = a[inner, H - MARK + 2:H - 2].reshape(-1, 3).mean(axis=0)
    top_left = a[inner, inner].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 200 and top_right[1:].max() < 60, top_right
    assert not (top_left[0] > 200 and top_left[1:].max() < 60)
    assert image_size(directory / EXIF_ROTATED) == (W, H)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow_exif_transpose(orientation):
    stored = photo()
    stored[:MARK, :MARK] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "PNG", exif=exif.tobytes())
    data = buf.getvalue()
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    np.testing.assert_array_equal(decode_image(data), expected)


def test_malformed_exif_keeps_the_pixels():
    buf = io.BytesIO()
    Image.fromarray(photo()).save(buf, "JPEG", exif=b"Exif\x00\x00garbage-not-tiff")
    assert decode_image(buf.getvalue()).shape == (H, W, 3)


# --- bad input -------------------------------------------------------------------------------

def test_every_broken_file_raises_its_reason(broken_dir):
    directory, expected = broken_dir
    assert set(expected.values()) >= set(REASONS) - {"missing", "read_error"}
    for filename, reason in expected.items():
        if reason == "ok":
            _assert_rgb(load_image(directory / filename, min_side=2), image_size(directory / filename))
        else:
            assert _reason(load_image, directory / filename, min_side=2) == reason, filename
            data = (directory / filename).read_bytes()
            assert _reason(decode_image, data, min_side=2, name=filename) == reason, filename


def test_broken_images_default_min_side_makes_the_tiny_image_ok(tmp_path):
    assert write_broken_images(tmp_path)["tiny_1x1.png"] == "ok"
    assert load_image(tmp_path / "tiny_1x1.png").shape == (1, 1, 3)


def test_truncated_images_are_never_grey_filled(broken_dir):
    directory, _ = broken_dir
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    for filename in ("truncated.jpg", "truncated.png"):
        assert _reason(load_image, directory / filename) == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_missing_path_directory_and_unreadable_file(tmp_path, good_dir, monkeypatch):
    assert _reason(load_image, tmp_path / "nope.jpg") == "missing"
    assert _reason(load_image, tmp_path / "nope" / "deeper.jpg") == "missing"
    assert _reason(image_size, tmp_path / "nope.jpg") == "missing"
    assert _reason(load_image, str(tmp_path / "nul\0byte.jpg")) == "missing"
    (tmp_path / "folder.jpg").mkdir()
    assert _reason(load_image, tmp_path / "folder.jpg") == "read_error"
    assert _reason(image_size, tmp_path / "folder.jpg") == "read_error"
    (tmp_path / "empty.png").write_bytes(b"")
    assert _reason(image_size, tmp_path / "empty.png") == "empty_file"

    def denied(path, mode="r"):
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    monkeypatch.setattr(images, "open", denied, raising=False)
    assert _reason(load_image, good_dir[0] / "rgb.jpg") == "read_error"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_file_without_read_permission(tmp_path):
    path = tmp_path / "secret.jpg"
    path.write_bytes(good_image_bytes()["rgb.jpg"])
    path.chmod(0)
    assert _reason(load_image, path) == "read_error"


def test_io_error_while_decoding_is_a_read_error(good_dir, monkeypatch):
    class FailingFile(io.BytesIO):
        def read(self, size=-1):
            if size < 0 or self.tell() + size > 100:  # header reads succeed, pixel reads fail
                raise OSError(errno.EIO, "Input/output error")
            return super().read(size)

    data = (good_dir[0] / "rgb.bmp").read_bytes()  # the pixels start after a 54-byte header
    monkeypatch.setattr(images, "open", lambda path, mode="r": FailingFile(data), raising=False)
    assert _reason(load_image, good_dir[0] / "rgb.bmp") == "read_error"


@pytest.mark.parametrize("exc", [ZeroDivisionError("boom"), struct.error("unpack"), ValueError("odd"),
                                 KeyError("k"), RuntimeError("r"), SyntaxError("bad marker")])
def test_unexpected_decoder_exceptions_become_corrupt(exc, monkeypatch):
    def failing_load(self):
        raise exc

    monkeypatch.setattr(ImageFile.ImageFile, "load", failing_load)
    with pytest.raises(ImageError) as info:
        decode_image(good_image_bytes()["rgb.jpg"])
    assert info.value.reason == "corrupt" and str(exc) in info.value.message


def test_mode_without_rgb_conversion_is_unsupported(monkeypatch):
    def no_conversion(self, mode=None, *args, **kwargs):
        raise ValueError(f"conversion from {self.mode} to {mode} not supported")

    data = good_image_bytes()["cmyk.jpg"]
    monkeypatch.setattr(Image.Image, "convert", no_conversion)
    assert _reason(decode_image, data) == "unsupported_mode"


def test_memory_error_is_too_large(monkeypatch):
    def failing_load(self):
        raise MemoryError()

    monkeypatch.setattr(ImageFile.ImageFile, "load", failing_load)
    assert _reason(decode_image, good_image_bytes()["rgb.bmp"]) == "too_large"


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's "Corrupt EXIF data" and the like
def test_mutated_files_never_crash():
    """Random byte damage and cuts: either a valid RGB array or an ImageError, nothing else."""
    rng = np.random.default_rng(7)
    sources = good_image_bytes()
    seen = set()
    for filename, data in sources.items():
        variants = [data[:n] for n in rng.integers(1, len(data), 6)]
        for _ in range(12):
            damaged = bytearray(data)
            for pos in rng.integers(0, len(data), rng.integers(1, 6)):
                damaged[pos] = rng.integers(0, 256)
            variants.append(bytes(damaged))
        for variant in variants:
            try:
                a = decode_image(variant, max_pixels=1_000_000, name=filename)
            except ImageError as e:
                seen.add(e.reason)
            else:
                assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and a.size > 0
    assert {"truncated", "corrupt"} <= seen


# --- limits ----------------------------------------------------------------------------------

def test_bomb_is_refused_from_the_header_before_decoding(monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    filters = list(warnings.filters)
    # 10000 x 10000 is above our default but below Pillow's hard limit (2 x its warning limit):
    # our header check must refuse it, and Pillow's DecompressionBombWarning must not escape.
    for width, height in ((10_000, 10_000), (100_000, 100_000), (2**31 - 1, 2**31 - 1)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            start = time.perf_counter()
            with pytest.raises(ImageError) as info:
                decode_image(png_with_header(width, height))
            assert time.perf_counter() - start < 1.0
        assert info.value.reason == "too_large", info.value
    assert Image.MAX_IMAGE_PIXELS == pillow_limit
    assert warnings.filters == filters


def test_image_size_applies_no_limit_of_its_own(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_with_header(10_000, 10_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert image_size(path) == (10_000, 10_000)
        path.write_bytes(png_with_header(100_000, 100_000))  # beyond Pillow's own hard limit
        assert _reason(image_size, path) == "too_large"


def test_max_pixels_is_configurable():
    data = png_with_header(300, 200)
    assert _reason(decode_image, data, max_pixels=300 * 200 - 1) == "too_large"
    # At the limit the guard passes and the (almost empty) pixel data is decoded and refused.
    assert _reason(decode_image, data, max_pixels=300 * 200) in {"truncated", "corrupt"}
    rgb = good_image_bytes()["rgb.jpg"]
    assert _reason(decode_image, rgb, max_pixels=H * W - 1) == "too_large"
    assert decode_image(rgb, max_pixels=H * W).shape == (H, W, 3)
    assert DEFAULT_MAX_PIXELS == 89_478_485


def test_min_side_is_configurable(good_dir):
    directory, _ = good_dir
    assert load_image(directory / "rgb.jpg", min_side=H).shape == (H, W, 3)
    assert _reason(load_image, directory / "rgb.jpg", min_side=H + 1) == "too_small"
    # The short side is orientation independent.
    assert load_image(directory / EXIF_ROTATED, min_side=H).shape == (W, H, 3)
    assert _reason(load_image, directory / EXIF_ROTATED, min_side=H + 1) == "too_small"


@pytest.mark.parametrize("limits", [dict(max_pixels=0), dict(min_side=0), dict(min_side=-1)])
def test_invalid_limits_are_programming_errors(limits):
    with pytest.raises(ValueError):
        decode_image(good_image_bytes()["rgb.jpg"], **limits)


# --- the error type and constants -------------------------------------------------------------

def test_image_error_contract():
    e = ImageError("truncated", "a.jpg: image file is truncated")
    assert isinstance(e, DelfxError)
    assert (e.reason, e.message) == ("truncated", "a.jpg: image file is truncated")
    assert str(e) == "truncated: a.jpg: image file is truncated"
    copy = pickle.loads(pickle.dumps(e))  # crosses process boundaries in distributed runs
    assert (type(copy), copy.reason, copy.message, str(copy)) == (ImageError, e.reason, e.message, str(e))
    with pytest.raises(ValueError):
        ImageError("no_such_reason", "x")


def test_reason_codes_are_stable():
    assert set(REASONS) == {"missing", "empty_file", "not_an_image", "truncated", "corrupt",
                            "too_large", "too_small", "unsupported_mode", "read_error"}
    assert all(code.isidentifier() and code.islower() and REASONS[code] for code in REASONS)


def test_image_extensions_cover_the_fixture_files(good_dir):
    _, expected = good_dir
    assert {os.path.splitext(f)[1] for f in expected} <= IMAGE_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)


def test_failures_are_logged_at_debug_level(caplog):
    with caplog.at_level("DEBUG", logger="delfx.images"):
        with pytest.raises(ImageError):
            decode_image(b"not an image", name="x.jpg")
    assert any(r.levelname == "DEBUG" and "not_an_image: x.jpg" in r.getMessage() for r in caplog.records)


def test_importing_the_module_does_not_import_tensorflow():
    code = "import sys, delfx.images; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1]).returncode == 0
