"""sha256 digests of files, folders and lists of parts: the one hashing helper of delfx.

Every artifact identifies what made it by digest (shard checksums in the manifest, model hashes,
weights files, SavedModel folders); all of them are computed here so that two places never hash
the same thing two ways.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

_BLOCK = 1 << 22  # 4 MiB reads: large enough to stream at disk speed, small enough for any RAM


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_sha256(folder: str | os.PathLike) -> str:
    """Hex sha256 over every file of a folder tree: relative names and bytes, in sorted order."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(_BLOCK):
                digest.update(chunk)
    return digest.hexdigest()


def combined_sha256(parts: Iterable[str]) -> str:
    """Hex sha256 of parts joined by '|' (how model digests combine weights, PCA, head...)."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def text_sha256(text: str) -> str:
    """Hex sha256 of a UTF-8 string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
