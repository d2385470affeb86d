"""Which images to process: a folder (recursive, by extension) or a list file, with stable ids.

An id is what identifies an image in every artifact (shards, index, submissions), so it must be
storable as UTF-8 text and unambiguous:

* ids may not contain control characters (a NUL cannot be stored in HDF5; a newline or tab would
  break the CSV and JSON-lines outputs): a list naming one is refused with its line;
* a file name that is not valid UTF-8 (bytes the file system allows, such as Latin-1 `caf\\xe9`)
  keeps its bytes: they are written as `\\xNN` escapes in the id (`caf\\xe9.jpg`), and the file is
  still read from its real path. Two names that escape alike are refused as duplicate ids.

A list file is UTF-8 (a BOM is fine) or UTF-16 with a BOM. Either a CSV with a header holding a
`path` column (and usually `id`), or plain text with one path per line (ids = the paths as
written; `#` starts a comment line). Relative paths are relative to the list file's folder.
A header that looks like CSV but has no `path` column is refused, never read as a path.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from delfx.errors import DelfxError
from delfx.images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ImageItem:
    """An image to process: its stable id and where to read it."""

    image_id: str
    path: str


def storable_id(name: str) -> str:
    """`name` as an id that UTF-8 can store: undecodable bytes (surrogate escapes from the file
    system) become `\\xNN`; everything else is kept."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def check_id(image_id: str, where: str) -> str:
    """The id, or a one-line DelfxError saying where it came from and what is wrong with it."""
    bad = _CONTROL.search(image_id)
    if bad:
        raise DelfxError(f"{where}: image id {image_id!r} contains the control character "
                         f"{bad.group()!r}; ids are stored as text and may not")
    if not image_id.strip():
        raise DelfxError(f"{where}: empty image id")
    return image_id


def input_stamp(path: str) -> tuple[int, int]:
    """(size, mtime in ns) of an input file: what a resume compares to notice a changed image;
    (-1, -1) when the file cannot be stat'ed (it will be recorded as failed)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return -1, -1
    return int(st.st_size), int(st.st_mtime_ns)


def list_images(source: Path) -> list[ImageItem]:
    """Images of a folder (ids = paths relative to it, '/'-separated) or of a list file.

    The result is sorted by id, so the order never depends on the file system.

    Raises:
        DelfxError: input missing, unreadable, malformed (with the line), no images, duplicate
            or unstorable ids.
    """
    source = Path(source)
    if source.is_dir():
        items = _walk(source)
    elif source.is_file():
        items = _read_list_file(source)
    elif source.exists():
        raise DelfxError(f"{source}: neither a folder nor a list file")
    else:
        raise DelfxError(f"input not found: {source}")
    items.sort(key=lambda item: item.image_id)
    seen: set[str] = set()
    for item in items:
        if item.image_id in seen:
            raise DelfxError(f"{source}: image id {item.image_id!r} appears twice")
        seen.add(item.image_id)
    if not items:
        raise DelfxError(f"{source}: no images found (extensions: {sorted(IMAGE_EXTENSIONS)})")
    return items


def _walk(source: Path) -> list[ImageItem]:
    items, unreadable = [], []
    for dirpath, dirnames, filenames in os.walk(source, onerror=unreadable.append):
        dirnames.sort()
        for name in filenames:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                path = Path(dirpath) / name
                image_id = storable_id(path.relative_to(source).as_posix())
                items.append(ImageItem(check_id(image_id, str(path)), str(path)))
    if unreadable:
        log.warning("%d folder(s) under %s could not be listed and were skipped (e.g. %s)",
                    len(unreadable), source, unreadable[0])
    return items


def _decode(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DelfxError(f"{path}: damaged UTF-16 text ({exc.reason}); save the list as "
                             f"UTF-8") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DelfxError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save "
                         f"the list as UTF-8") from None


def _read_list_file(path: Path) -> list[ImageItem]:
    base = path.parent
    try:
        text = _decode(path)
    except OSError as exc:
        raise DelfxError(f"cannot read {path}: {exc.strerror or exc}") from None
    lines = text.splitlines()
    first = next((k for k, line in enumerate(lines) if line.strip()
                  and not line.lstrip().startswith("#")), None)
    if first is None:
        return []
    head = lines[first].strip()
    fields = [f.strip() for f in next(csv.reader([head]))]
    names = [f.lower() for f in fields]
    if "path" in names:
        return _read_csv(path, "\n".join(lines[first:]), first)
    if not (base / head).is_file():  # a first line naming a file is a plain list, commas or not
        if len(fields) > 1:
            raise DelfxError(f"{path}:{first + 1}: the header {fields} has no 'path' column "
                             f"(a list file is a CSV with id,path columns, or one path per line)")
        for separator in (";", "\t"):
            parts = [p.strip().lower() for p in head.split(separator)]
            if len(parts) > 1 and "path" in parts:
                raise DelfxError(f"{path}:{first + 1}: columns separated by {separator!r}: "
                                 f"separate them with commas (id,path)")
    items = []
    for k, line in enumerate(lines[first:], start=first + 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        items.append(ImageItem(check_id(entry, f"{path}:{k}"), str(base / entry)))
    return items


def _read_csv(path: Path, text: str, offset: int) -> list[ImageItem]:
    base = path.parent
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
        path_col = header.index("path")
        id_col = header.index("id") if "id" in header else None
        items = []
        for row in reader:
            line = offset + reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            cells = [c.strip() for c in row] + [""] * len(header)
            raw = cells[path_col]
            image_id = (cells[id_col] if id_col is not None else "") or raw
            if not raw:
                raise DelfxError(f"{path}:{line}: image {image_id!r} has no path")
            items.append(ImageItem(check_id(image_id, f"{path}:{line}"), str(base / raw)))
        return items
    except csv.Error as exc:
        raise DelfxError(f"{path}:{offset + reader.line_num}: malformed CSV ({exc})") from None
