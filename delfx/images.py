"""Decode and validate images; every unusable input becomes a typed :class:`ImageError`.

A run over millions of images from the wild must neither crash on a bad file nor store an empty
result for it: each failure carries a stable ``reason`` code (:data:`REASONS`) recorded per image.

Decoded arrays are ``uint8`` RGB ``(H, W, 3)``, C-contiguous and writable, and:

* EXIF orientation is applied (``ImageOps.exif_transpose``'s table), so ``(y, x)`` locations refer
  to the image as a person sees it; :func:`image_size` reports that oriented size. Unreadable EXIF
  means "no rotation" rather than a lost image.
* Transparency is composited over white, as a viewer shows it. Dropping alpha would expose what
  the encoder left under transparent pixels (often black), whose edges yield spurious keypoints.
* High bit depth is scaled, never clipped: 16-bit samples keep their high byte (65535 -> 255).
* Multi-frame files (animated GIF/WebP/PNG, MPO, TIFF pages) give their first frame.
* The format is sniffed from the content; the file extension is ignored.

Decompression bombs: ``width * height`` is checked against ``max_pixels`` from the header, before
any pixel is decoded (``Image.open`` is lazy). Pillow's process-wide ``MAX_IMAGE_PIXELS`` is left
alone, so other code keeps its protection and it still guards sizes no header shows (GIF frames
beyond the canvas). Within our calls its warning is ignored and its error (above twice its limit)
becomes "too_large": a larger ``max_pixels`` needs the application to raise Pillow's limit too.
``warnings.catch_warnings`` is process-global before Python 3.14: with concurrent decoding
threads an "ignore DecompressionBombWarning" filter may outlive our calls, and a filter another
thread adds meanwhile may be lost. Decode in processes, or accept that.

Truncated data is refused as long as ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False (never set
here). Blind spot: libjpeg silently repairs corrupted entropy-coded JPEG data (garbled pixels).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import stat
import warnings
from typing import IO, Iterator

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from delfx.config import DEFAULT_MAX_PIXELS  # noqa: F401 (re-exported: the decoder's default)
from delfx.errors import DelfxError

logger = logging.getLogger(__name__)

REASONS: dict[str, str] = {
    "missing": "the path does not exist",
    "empty_file": "the file or byte string has zero length",
    "not_an_image": "content is not an image in an accepted format (text, HTML, random bytes, ...)",
    "truncated": "the image data ends early (e.g. an interrupted download)",
    "corrupt": "recognised image format but the data cannot be decoded",
    "too_large": "width * height exceeds max_pixels (decompression-bomb guard) or memory ran out",
    "too_small": "the short side is below min_side",
    "unsupported_mode": "valid image whose pixel format cannot be converted to 8-bit RGB",
    "read_error": "the path cannot be read (a directory, no permission, I/O error)",
}


# File names a directory scan should consider (compare lower-cased suffixes). Decoding itself
# sniffs content, so a mislabelled file is still decoded if its real format is accepted.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".apng", ".gif", ".webp",
                              ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".avif"})

# Formats Pillow may open. An allowlist, because with "all formats" untrusted input would reach
# rarely exercised parsers, and EPS files would be handed to Ghostscript in a subprocess.
_ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "PPM", "AVIF")

# EXIF orientation -> transpose displaying the image upright (as PIL.ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({5, 6, 7, 8})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})


class ImageError(DelfxError):
    """Raised for an image that cannot be used; `reason` is a stable short code stored in the feature shards.

    Attributes:
        reason: A key of :data:`REASONS`.
        message: Human-readable detail, starting with the image name.
    """

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown image error reason {reason!r}")
        # Both values go to Exception.args so the error pickles across processes (Ray workers).
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1,
                 name: str = "<bytes>") -> np.ndarray:
    """Decodes encoded image bytes to an upright RGB array.

    Args:
        data: The encoded file content (bytes, bytearray or memoryview).
        max_pixels: Largest accepted width * height, checked before decoding.
        min_side: Smallest accepted length of the short side, in pixels.
        name: Used in error messages and logs.

    Returns:
        A C-contiguous, writable ``uint8`` array of shape ``(H, W, 3)``, EXIF orientation applied.

    Raises:
        ImageError: If the data cannot be used; ``reason`` says why.
        ValueError: If ``max_pixels`` or ``min_side`` is below 1 (a programming error).
    """
    if len(data) == 0:
        raise _logged(ImageError("empty_file", f"{name}: zero bytes"))
    return _decode(io.BytesIO(data), name, max_pixels, min_side)


def load_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_side: int = 1) -> np.ndarray:
    """Reads and decodes an image file; see :func:`decode_image` for the result and errors."""
    with _open_file(path) as fp:
        return _decode(fp, os.fspath(path), max_pixels, min_side)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Returns ``(height, width)`` as :func:`load_image` would, reading only the header.

    Raises:
        ImageError: As :func:`load_image`, but without the ``max_pixels`` and ``min_side`` checks
            (only Pillow's own hard bomb limit can give "too_large").
    """
    name = os.fspath(path)
    with _open_file(path) as fp, _no_bomb_warning():
        im = _open_image(fp, name)
        width, height = im.size
        return (width, height) if _orientation(im, name) in _SWAPS_AXES else (height, width)


def _logged(error: ImageError) -> ImageError:
    # Debug only: the run records every failure, and over millions of images warnings are noise.
    logger.debug("%s", error)
    return error


@contextlib.contextmanager
def _no_bomb_warning() -> Iterator[None]:
    with warnings.catch_warnings():  # see the module docstring
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _open_file(path: str | os.PathLike) -> IO[bytes]:
    name = os.fspath(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # a directory, or a FIFO that would block open()
            raise _logged(ImageError("read_error", f"{name}: not a regular file"))
        if st.st_size == 0:
            raise _logged(ImageError("empty_file", f"{name}: zero bytes"))
        return open(path, "rb")
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:  # ValueError: a NUL in the path
        raise _logged(ImageError("missing", f"{name}: {e}")) from None
    except OSError as e:
        raise _logged(ImageError("read_error", f"{name}: {e}")) from None


@functools.cache
def _formats() -> tuple[str, ...]:
    Image.init()  # registers every plugin; Image.open raises KeyError for unregistered names
    return tuple(f for f in _ACCEPTED_FORMATS if f in Image.OPEN)


def _classify(exc: Exception, name: str) -> ImageError:
    """Maps anything raised while opening or decoding to an ImageError."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (Image.DecompressionBombError, MemoryError)):
        return ImageError("too_large", f"{name}: {text}")
    if isinstance(exc, OSError) and exc.errno is not None:  # Pillow's decoder errors have none
        return ImageError("read_error", f"{name}: {text}")
    if isinstance(exc, EOFError) or "truncat" in text.lower():
        return ImageError("truncated", f"{name}: {text}")
    if "unknown pixel mode" in text or "unsupported" in text.lower():
        return ImageError("unsupported_mode", f"{name}: {text}")
    return ImageError("corrupt", f"{name}: {text}")


def _open_image(fp: IO[bytes], name: str) -> Image.Image:
    """Parses the header only; tells a damaged image from a non-image when that fails."""
    try:
        return Image.open(fp, formats=_formats())
    except UnidentifiedImageError:
        pass
    except Exception as e:
        raise _logged(_classify(e, name)) from None
    # Image.open swallows the parser's own error. If a plugin claims the signature, run that
    # parser alone to recover the real cause ("Truncated File Read", "unknown pixel mode", ...).
    fp.seek(0)
    head = fp.read(16)
    for fmt in _formats():
        factory, accept = Image.OPEN[fmt]
        try:
            claimed = accept(head) if accept is not None else False
        except Exception:  # Image.open treats a failing signature test as "not this format"
            continue
        if not claimed or isinstance(claimed, str):  # a str is Pillow's "plugin not installed"
            continue
        try:
            fp.seek(0)
            factory(fp, "")
        except Exception as e:
            raise _logged(_classify(e, f"{name} ({fmt})")) from None
        raise _logged(ImageError("corrupt", f"{name}: {fmt} signature, unreadable header"))
    raise _logged(ImageError("not_an_image", f"{name}: not a recognised image format"))


def _orientation(im: Image.Image, name: str) -> int:
    try:
        # The base-class getexif reads only what the header gave: PngImageFile.getexif decodes
        # the whole image when eXIf follows IDAT, which image_size must not do, and reading it
        # before load() keeps image_size and load_image in agreement.
        value = Image.Image.getexif(im).get(ExifTags.Base.Orientation, 1)
        return value if value in _TRANSPOSE else 1
    except Exception as e:  # malformed EXIF: keep the pixels, skip the rotation
        logger.debug("%s: ignoring unreadable EXIF orientation: %s", name, e)
        return 1


def _decode(fp: IO[bytes], name: str, max_pixels: int, min_side: int) -> np.ndarray:
    if max_pixels < 1 or min_side < 1:
        raise ValueError(f"max_pixels and min_side must be >= 1, got {max_pixels}, {min_side}")
    with _no_bomb_warning():
        im = _open_image(fp, name)
        width, height = im.size
        if width * height > max_pixels:
            raise _logged(ImageError("too_large", f"{name}: {width}x{height} > {max_pixels} pixels"))
        if min(width, height) < min_side:
            raise _logged(ImageError("too_small", f"{name}: {width}x{height}, min_side={min_side}"))
        orientation = _orientation(im, name)
        try:
            im.load()
            rgb = _to_rgb(im)
            if orientation in _TRANSPOSE:
                rgb = rgb.transpose(_TRANSPOSE[orientation])
            # np.asarray would give a read-only view of Pillow's bytes; callers may write in place.
            return np.array(rgb, dtype=np.uint8, order="C")
        except ValueError as e:
            if "conversion" not in str(e):  # Image.convert: "conversion from X to Y not supported"
                raise _logged(_classify(e, name)) from None
            raise _logged(ImageError("unsupported_mode", f"{name}: mode {im.mode}: {e}")) from None
        except Exception as e:  # MemoryError included: one image must not end the run
            raise _logged(_classify(e, name)) from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = _to_8bit(im)
    if im.mode == "La":
        im = im.convert("LA")  # Pillow cannot convert premultiplied La to RGB(A) directly
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im.convert("RGBA"))
    return im.convert("RGB")


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scales a high-bit-depth single-channel image to L (Pillow's own convert clips at 255)."""
    a = np.asarray(im)
    if a.dtype.kind in "iu" and a.min() >= 0 and a.max() <= 65535:
        # 16-bit samples (I;16*, or mode I from 16-bit PGM): keep the high byte, as Pillow does
        # for 48-bit RGB PNGs; 65535 -> 255, and no float copy of a possibly huge image.
        return Image.fromarray((a >> 8).astype(np.uint8))
    # Floats, or integers beyond 16 bits with no known nominal range: floats within 0..1 are
    # taken as normalised, anything else is stretched from its minimum to its maximum.
    f = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(f.min()), float(f.max())
    if a.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return Image.fromarray(np.rint((f - lo) * scale).astype(np.uint8))
