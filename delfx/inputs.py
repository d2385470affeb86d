"""Which images to process: a folder (recursive, by extension) or a list file, with stable ids."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from delfx.errors import DelfxError
from delfx.images import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class ImageItem:
    """An image to process: its stable id and where to read it."""

    image_id: str
    path: str


def list_images(source: Path) -> list[ImageItem]:
    """Images of a folder (ids = paths relative to it, '/'-separated) or of a list file.

    A list file is a CSV with a header containing `id` and `path` columns, or plain text with
    one path per line (ids = the paths as written). Relative paths in a list file are relative
    to the folder of the list file. The result is sorted by id, so the order never depends on
    the file system.
    """
    source = Path(source)
    if source.is_dir():
        items = []
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            for name in filenames:
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                    path = Path(dirpath) / name
                    items.append(ImageItem(path.relative_to(source).as_posix(), str(path)))
    elif source.is_file():
        items = _read_list_file(source)
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


def _read_list_file(path: Path) -> list[ImageItem]:
    base = path.parent
    text = path.read_text(encoding="utf-8-sig")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = [h.strip() for h in next(csv.reader([lines[0]]))]
    if "path" in header:
        rows = csv.DictReader(lines)
        items = []
        for row in rows:
            raw = (row.get("path") or "").strip()
            if not raw:
                continue
            image_id = (row.get("id") or "").strip() or raw
            items.append(ImageItem(image_id, str(base / raw)))
        return items
    return [ImageItem(line.strip(), str(base / line.strip())) for line in lines
            if not line.lstrip().startswith("#")]
