"""FAISS index of the gallery's global (GeM) descriptors: the first-stage shortlist.

The pattern of the strongest GLR2019 solutions: a global descriptor finds the K most similar
gallery images, and only those are verified with local features (`Recognizer` mode
`shortlist`), instead of every query keypoint voting through the local-descriptor index.
Descriptors are L2-normalised, so inner product = cosine similarity; the index is exact
(`IndexFlatIP`: 2 KB per image at 512-d, a 1M-image gallery in 2 GB; an IVF factory would be
the next step past that). Failed images (zero vectors) are left out.

Files (next to the local index made by `delfx build-index`): `global.faiss` (FAISS's own
format) and `global.json` (the image ids by row, the global model, versions).
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any

import numpy as np

from delfx.artifacts import header, read_json_artifact
from delfx.digests import file_sha256
from delfx.errors import DelfxError
from delfx.paths import atomic_write_json
from delfx.store import FeatureSet
from delfx.versions import library_versions

log = logging.getLogger(__name__)

INDEX_FILE, META_FILE = "global.faiss", "global.json"
FORMAT_NAME, FORMAT_VERSION = "delfx-global-index", 1


class GlobalIndex:
    """Cosine nearest neighbours among gallery images.

    Args:
        vectors: (N, G) L2-normalised descriptors.
        image_ids: the gallery image id of each row.
        model: {"id", "hash", "dim"} of the global model that made them.
    """

    def __init__(self, vectors: np.ndarray, image_ids: list[str], model: dict[str, Any], *,
                 index=None):
        import faiss
        self.image_ids, self.model = list(image_ids), dict(model)
        if index is None:
            index = faiss.IndexFlatIP(int(model["dim"]))
            index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.index = index
        if self.index.ntotal != len(self.image_ids):
            raise DelfxError(f"global index holds {self.index.ntotal} vectors for "
                             f"{len(self.image_ids)} image ids")

    @classmethod
    def from_feature_set(cls, fs: FeatureSet) -> "GlobalIndex":
        if not fs.global_model:
            raise DelfxError(f"{fs.root} has no global descriptors: extract it with "
                             f"--global-model DIR (a `delfx train --model gem-*` output)")
        vectors = fs.global_descriptors()
        keep = np.linalg.norm(vectors, axis=1) > 0
        ids = [i for i, k in zip(fs.image_ids, keep) if k]
        return cls(vectors[keep], ids, fs.global_model)

    def __len__(self) -> int:
        return len(self.image_ids)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """(similarities (n, k'), gallery ids per query), best first; k' = min(k, gallery size)."""
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if vectors.shape[1] != int(self.model["dim"]):
            raise DelfxError(f"query global descriptors are {vectors.shape[1]}-d, the gallery's "
                             f"{self.model['dim']}-d")
        k = min(int(k), len(self))
        if k == 0:
            return np.zeros((len(vectors), 0), np.float32), [[] for _ in vectors]
        sims, rows = self.index.search(vectors, k)
        return sims, [[self.image_ids[r] for r in row if r >= 0] for row in rows]

    def check_query_model(self, model: dict[str, Any] | None, source: str) -> None:
        """Refuse query descriptors made by another global model than the gallery's."""
        if not model or model.get("hash") != self.model.get("hash"):
            raise DelfxError(f"{source}: global descriptors {model} do not come from the "
                             f"gallery's global model {self.model['id']} "
                             f"({str(self.model['hash'])[:12]})")

    def save(self, folder: Path) -> None:
        import faiss
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{INDEX_FILE}.partial"
        faiss.write_index(self.index, str(tmp))
        tmp.replace(folder / INDEX_FILE)
        # json last: its presence marks a complete global index.
        atomic_write_json(folder / META_FILE, {
            **header(FORMAT_NAME, FORMAT_VERSION), "model": self.model,
            "image_ids": self.image_ids, "versions": library_versions(),
            "sha256": file_sha256(folder / INDEX_FILE),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})

    @staticmethod
    def exists(folder: Path) -> bool:
        return (Path(folder) / META_FILE).is_file()

    @classmethod
    def load(cls, folder: Path) -> "GlobalIndex":
        import faiss
        folder = Path(folder)
        advice = "rebuild the index (build-index --overwrite)"
        meta = read_json_artifact(folder / META_FILE, FORMAT_NAME, {FORMAT_VERSION},
                                  what="delfx global index", advice=advice)
        path = folder / INDEX_FILE
        if not path.is_file():
            raise DelfxError(f"{path}: missing; {advice}")
        if "sha256" in meta and file_sha256(path) != meta["sha256"]:
            raise DelfxError(f"{path}: sha256 differs from {META_FILE} (altered after it was "
                             f"written); {advice}")
        model, ids = meta.get("model"), meta.get("image_ids")
        if not (isinstance(model, dict) and isinstance(model.get("dim"), int) and
                isinstance(model.get("hash"), str) and isinstance(ids, list) and
                all(isinstance(i, str) for i in ids)):
            raise DelfxError(f"{folder / META_FILE}: malformed global index metadata; {advice}")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            raise DelfxError(f"{path}: unreadable FAISS index; {advice}") from None
        if index.d != model["dim"]:
            raise DelfxError(f"{path}: {index.d}-d vectors, {META_FILE} says {model['dim']}; "
                             f"{advice}")
        return cls(None, ids, model, index=index)
