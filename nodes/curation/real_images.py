"""The user's real images join a dataset: accepted as they are (no score, never re-decided away),
marked ``source: real``, counted apart from the generated images unless asked (``reader.count_record``).

Importing is idempotent: an image's id is the hash of its file, so importing again (every queue
run of a graph that wires them) stores only images that are new since, and decodes only those.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..common.identity import item_id
from ..fewshot.realset import RealSet, file_digest, real_item

BATCH = 16   # images decoded and written per durable step (bounds memory for large sets)


@dataclass
class ImportResult:
    written: int = 0
    already: int = 0
    over_quota: int = 0      # counted toward the quota and their class was full: not stored
    paths: list = field(default_factory=list)

    def line(self) -> str:
        line = f"real images: {self.written} imported, {self.already} already in the dataset"
        return line + (f", {self.over_quota} not stored (class at its quota)" if self.over_quota else "")


def import_real(writer, realset: RealSet, counts_toward_quota: bool = False,
                check_interrupt: Callable[[], None] = lambda: None, embeddings: dict | None = None,
                clip_model: str | None = None) -> ImportResult:
    """Store the set's images that ``writer`` (an open ``DatasetWriter``) does not hold yet.

    ``embeddings`` ({file sha256: vector}, the CLIP filter's encoding of these photos in the same
    queue run) and ``clip_model`` (the CLIP that made them): stored with each newly imported photo,
    so Finalize and later filter runs use them without encoding again."""
    result = ImportResult()
    batch = []
    for i in range(len(realset.images)):
        check_interrupt()
        digest = file_digest(realset.images[i].path)
        if writer.stored(item_id(real_item(realset, i, digest, counts_toward_quota, load=False))):
            result.already += 1
            continue
        item = real_item(realset, i, digest, counts_toward_quota)
        if embeddings and digest in embeddings:
            item.embedding = embeddings[digest]
            item.extra = {**item.extra, "clip_model": clip_model}
        batch.append(item)
        if len(batch) >= BATCH:
            _flush(writer, batch, result)
    _flush(writer, batch, result)
    return result


def _flush(writer, batch: list, result: ImportResult) -> None:
    if not batch:
        return
    written = writer.write(batch)
    result.written += written.written["accepted"]
    result.already += written.skipped_duplicate["accepted"]   # the same file twice in the set
    result.over_quota += written.skipped_quota
    result.paths += written.paths
    batch.clear()
