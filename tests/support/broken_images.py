"""Test fixtures: image files of every supported kind, and one file per kind of bad input.

Everything is generated in code (numpy/Pillow and a few hand-written bytes). Imported by several
tests, including distributed extraction, which compare recorded failure reasons with the maps
returned here.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# Stored (unrotated) size of most good images; not square so that axis mix-ups show.
H, W = 30, 50
# The EXIF-rotated JPEG: stored H x W with a red MARK x MARK block in the stored top-left corner.
# Orientation 6 means "rotate 90 degrees clockwise to display", so the block must end up in the
# top-right corner of the decoded (W, H) image.
EXIF_ROTATED = "exif_orientation6.jpg"
MARK = 10
# 16-bit images hold a ramp from 0 to this value, which must decode to 255.
MAX16 = 65535


def _encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_header(width: int, height: int) -> bytes:
    """Returns a PNG whose header declares width x height RGB pixels but with almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def _png_rgb16(rows: np.ndarray) -> bytes:
    # Pillow cannot write 16-bit RGB, so write the 48-bit PNG by hand (filter 0 on every row).
    h, w, _ = rows.shape
    raw = b"".join(b"\x00" + rows[y].astype(">u2").tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))


def _patch_tiff_tag(data: bytes, tag: int, old: int, new: int) -> bytes:
    # A little-endian IFD entry of one SHORT: tag, type 3, count 1, value padded to 4 bytes.
    entry = struct.pack("<HHIHH", tag, 3, 1, old, 0)
    assert data.count(entry) == 1, f"TIFF tag {tag}={old} not found exactly once"
    return data.replace(entry, struct.pack("<HHIHH", tag, 3, 1, new, 0))


def photo(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """Returns a smooth uint8 RGB test picture (smooth, so JPEG keeps it recognisable)."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1),
                    (x + y + seed * 40) % 256], axis=-1)
    return rgb.astype(np.uint8)


def ramp16(h: int = H, w: int = W) -> np.ndarray:
    """Returns a uint16 ramp from 0 to MAX16."""
    return np.linspace(0, MAX16, h * w).reshape(h, w).round().astype(np.uint16)


def good_image_bytes() -> dict[str, bytes]:
    """Returns {filename: encoded bytes} for every supported mode and container."""
    rgb = Image.fromarray(photo())
    gray = rgb.convert("L")
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1)))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    gray_alpha = gray.copy()
    gray_alpha.putalpha(alpha)
    palette = rgb.quantize(16)
    frames = [Image.fromarray(photo(seed=i)) for i in range(3)]
    animated = {"save_all": True, "append_images": frames[1:], "duration": 100, "loop": 0}
    marked = photo()
    marked[:MARK, :MARK] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    gray16 = Image.fromarray(ramp16())
    gray16_be = Image.frombytes("I;16B", (W, H), ramp16().astype(">u2").tobytes())
    return {
        "rgb.jpg": _encode(rgb, "JPEG", quality=95),
        "gray_L.jpg": _encode(gray, "JPEG", quality=95),
        "gray_L.png": _encode(gray, "PNG"),
        "gray_alpha_LA.png": _encode(gray_alpha, "PNG"),
        "bilevel_1.png": _encode(gray.convert("1"), "PNG"),
        "palette_P.png": _encode(palette, "PNG"),
        "palette_transparency.png": _encode(palette, "PNG", transparency=0),
        "rgba.png": _encode(rgba, "PNG"),
        "cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG", quality=95),
        "gray16.png": _encode(gray16, "PNG"),
        "gray16.tif": _encode(gray16, "TIFF"),
        "gray16_bigendian.tif": _encode(gray16_be, "TIFF"),
        "gray16.pgm": _encode(gray16, "PPM"),  # opens in mode "I"
        "gray_float.tif": _encode(Image.fromarray(ramp16().astype(np.float32) / MAX16), "TIFF"),
        "rgb16.png": _png_rgb16(np.dstack([ramp16()] * 3)),
        "gray_premultiplied_La.tif": _patch_tiff_tag(_encode(gray_alpha, "TIFF"), 338, 2, 1),
        "ycbcr.tif": _encode(rgb.convert("YCbCr"), "TIFF"),
        EXIF_ROTATED: _encode(Image.fromarray(marked), "JPEG", quality=95, exif=exif.tobytes()),
        "animated.gif": _encode(frames[0], "GIF", **animated),
        "animated.webp": _encode(frames[0], "WEBP", lossless=True, **animated),
        "animated.png": _encode(frames[0], "PNG", **animated),
        "lossy.webp": _encode(rgba, "WEBP", quality=90),
        "two_frames.mpo": _encode(frames[0], "MPO", save_all=True, append_images=frames[1:2]),
        "rgb_lzw.tif": _encode(rgb, "TIFF", compression="tiff_lzw"),
        "rgb.bmp": _encode(rgb, "BMP"),
        "rgb.ppm": _encode(rgb, "PPM"),
    }


def write_good_images(directory: str | Path) -> dict[str, tuple[int, int]]:
    """Writes one valid image per supported mode/format into `directory`.

    Returns:
        {filename: expected decoded (height, width)}, EXIF orientation applied.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    expected = {}
    for filename, data in good_image_bytes().items():
        (directory / filename).write_bytes(data)
        expected[filename] = (W, H) if filename == EXIF_ROTATED else (H, W)
    return expected


def write_broken_images(directory: str | Path, *, min_side: int = 1) -> dict[str, str]:
    """Writes one file per kind of bad input into `directory` (plus mislabelled good ones).

    Args:
        directory: Created if missing.
        min_side: The ``min_side`` the files will be decoded with; decides whether the 1x1
            image is "too_small" or "ok". The maximum pixel count is assumed to be at most
            10**10 (``bomb.png`` declares 100000 x 100000).

    Returns:
        {filename: expected ImageError reason, or "ok" for files that must decode}.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    jpeg = _encode(Image.fromarray(photo(300, 400)), "JPEG", quality=90)
    png = _encode(Image.fromarray(photo(300, 400)), "PNG")
    rgb_tiff = _encode(Image.fromarray(photo()), "TIFF")
    rng = np.random.default_rng(1234)
    noise = b"\x00" + rng.integers(0, 256, 4095, dtype=np.uint8).tobytes()  # no image signature

    # Overwrite the start of scan header (component selectors, Huffman table ids) with zeros.
    sos = jpeg.index(b"\xff\xda")
    jpeg_bad_scan = jpeg[:sos + 2] + b"\x00" * 12 + jpeg[sos + 14:]
    # Destroy the Huffman tables: the header cannot be parsed at all.
    dht = jpeg.index(b"\xff\xc4")
    jpeg_bad_header = jpeg[:dht + 5] + b"\xff" * 35 + jpeg[dht + 40:]
    middle = len(png) // 2
    png_bad_middle = png[:middle] + bytes(rng.integers(0, 256, 200, dtype=np.uint8)) + png[middle + 200:]

    files = {
        "empty.jpg": (b"", "empty_file"),
        "text.jpg": (b"this is not an image\n" * 20, "not_an_image"),
        "error_page.jpg": (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
                           b"<body><h1>Not Found</h1></body></html>\n", "not_an_image"),
        "random_bytes.jpg": (noise, "not_an_image"),
        "truncated.jpg": (jpeg[:len(jpeg) // 2], "truncated"),
        "truncated_header.jpg": (jpeg[:100], "truncated"),
        "truncated.png": (png[:len(png) // 2], "truncated"),
        "jpeg_no_eoi.jpg": (jpeg[:-2], "truncated"),
        "corrupt_scan_header.jpg": (jpeg_bad_scan, "corrupt"),
        "corrupt_huffman_tables.jpg": (jpeg_bad_header, "corrupt"),
        "corrupt_middle.png": (png_bad_middle, "corrupt"),
        "bomb.png": (png_with_header(100_000, 100_000), "too_large"),
        "unknown_photometric.tif": (_patch_tiff_tag(rgb_tiff, 262, 2, 9), "unsupported_mode"),
        "tiny_1x1.png": (_encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
                         "too_small" if min_side > 1 else "ok"),
        "really_a_jpeg.png": (jpeg, "ok"),  # content is sniffed, the extension is ignored
        "really_a_png.jpg": (png, "ok"),
    }
    for filename, (data, _) in files.items():
        (directory / filename).write_bytes(data)
    return {filename: reason for filename, (_, reason) in files.items()}
