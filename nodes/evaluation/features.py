"""Image features for the evaluation: CLIP image embeddings, one row per image.

``encode`` is any callable ``list of H x W x 3 float32 arrays in [0, 1] -> [n, D]`` (the CLI and the
node wrap ``scoring.similarity.encode_images`` with a loaded CLIP; tests pass a cheap fake). Every
row is L2-normalised, as the embeddings the writer stores.

``FeatureSource`` gives the features of dataset records and of image files:

- a record with a stored embedding (``embedding_dim``) uses it, unless it does not fit the encoder:
  another size than ``encode`` returns, or, checked on up to ``check_stored`` records, a median
  cosine with the re-encoded file below ``MIN_STORED_COSINE`` (the dataset was scored with another
  CLIP). Then every record is encoded from its file and ``notes`` says why (``counts["checked"]``:
  the records re-encoded for the check);
- a record without one, and every image file (test set, few-shot images), is decoded
  (``fewshot.pixels.load_image``: ``image_size`` square, centre crop, as CLIP's own preprocessing)
  and encoded, ``batch_size`` images at a time. A file that cannot be decoded raises
  ``EvaluationError`` naming it.

Features are cached per record id and per file, so a sweep over thresholds encodes each image once.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..common.vectors import unit_rows
from ..fewshot.imageset import FewShotError
from ..fewshot.pixels import load_image
from ..store import embeddings
from .errors import EvaluationError

Encode = Callable[[list], np.ndarray]
MIN_STORED_COSINE = 0.9


def clip_encoder(bundle, batch_size: int = 32) -> Encode:
    """``encode`` from a loaded CLIP (``scoring.clip_model.load_clip``): its L2-normalised image
    embeddings, the ones the filter stores; ``encode.image_size`` is the model's input side."""
    from ..scoring.similarity import encode_images

    def encode(images):
        return encode_images(bundle, images, batch_size)

    encode.image_size = int(max(bundle.image_size))
    return encode


class FeatureSource:
    def __init__(self, dataset_dir, encode: Encode, *, image_size: int = 224, batch_size: int = 32,
                 use_stored: bool = True, check_stored: int = 8,
                 check_interrupt: Callable[[], None] = lambda: None):
        if not callable(encode):
            raise EvaluationError(None, f"encode must be a callable (images -> [n, D] features), got {type(encode).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise EvaluationError(None, f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.dataset_dir = None if dataset_dir is None else Path(dataset_dir)
        self.encode = encode
        self.image_size = int(image_size)
        self.batch_size = batch_size
        self.use_stored = bool(use_stored)
        self.check_stored = int(check_stored)
        self.check_interrupt = check_interrupt
        self.notes: list[str] = []
        self.counts = {"stored": 0, "encoded_records": 0, "encoded_files": 0, "checked": 0}
        self.dim: int | None = None
        self._by_record: dict[str, np.ndarray] = {}
        self._by_file: dict[Path, np.ndarray] = {}
        self._stored: dict[str, np.ndarray] | None = None
        self._stored_ok: bool | None = None

    # -- public ----------------------------------------------------------------------------------
    def for_files(self, paths: Sequence) -> np.ndarray:
        """float32 [n, D] features of image files, in order."""
        paths = [Path(p) for p in paths]
        todo = list(dict.fromkeys(p for p in paths if p not in self._by_file))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            feats = self._encode_paths(chunk)
            self._by_file.update(zip(chunk, feats))
            self.counts["encoded_files"] += len(chunk)
        return self._stack([self._by_file[p] for p in paths])

    def for_records(self, records: Sequence[dict]) -> np.ndarray:
        """float32 [n, D] features of dataset records (stored embedding or encoded file), in order."""
        if records and self.dataset_dir is None:
            raise EvaluationError(None, "records need the dataset folder their files are in")
        todo = list({r["id"]: r for r in records if r["id"] not in self._by_record}.values())
        stored = self._usable_stored(todo)
        encode = []
        for rec in todo:
            if rec["id"] in self._by_record:       # encoded by the check of the stored embeddings
                continue
            vec = stored.get(rec["id"])
            if vec is None:
                encode.append(rec)
            else:
                self._by_record[rec["id"]] = vec
                self.counts["stored"] += 1
        for start in range(0, len(encode), self.batch_size):
            chunk = encode[start:start + self.batch_size]
            feats = self._encode_paths([self.dataset_dir / r["file"] for r in chunk], what="dataset image")
            self._by_record.update((r["id"], f) for r, f in zip(chunk, feats))
            self.counts["encoded_records"] += len(chunk)
        return self._stack([self._by_record[r["id"]] for r in records])

    def describe(self) -> dict:
        return {"dim": self.dim, "image_size": self.image_size, **self.counts,
                "stored_embeddings_used": bool(self._stored_ok) and self.counts["stored"] > 0}

    # -- stored embeddings -----------------------------------------------------------------------
    def _usable_stored(self, records: list[dict]) -> dict[str, np.ndarray]:
        with_emb = [r for r in records if r.get("embedding_dim")]
        if not self.use_stored or not with_emb or self._stored_ok is False:
            return {}
        if self._stored is None:
            self._stored = embeddings.load(self.dataset_dir, {r["id"] for r in with_emb})
        else:
            missing = {r["id"] for r in with_emb} - set(self._stored)
            if missing:
                self._stored.update(embeddings.load(self.dataset_dir, missing))
        if self._stored_ok is None:
            self._stored_ok = self._verify(with_emb)
            if not self._stored_ok:
                return {}
        return {r["id"]: unit_rows(self._stored[r["id"]][None].astype(np.float32))[0]
                for r in with_emb if r["id"] in self._stored and self._stored[r["id"]].shape[0] == self.dim}

    def _verify(self, with_emb: list[dict]) -> bool:
        """Do the stored embeddings come from this encoder? Re-encode a few files and compare."""
        sample = [r for r in with_emb if r["id"] in self._stored][:max(self.check_stored, 1)]
        if not sample:
            return False
        feats = self._encode_paths([self.dataset_dir / r["file"] for r in sample], what="dataset image")
        dims = {self._stored[r["id"]].shape[0] for r in sample}
        problem = None
        if dims != {self.dim}:
            problem = f"stored embeddings have size {', '.join(map(str, sorted(dims)))}, the encoder gives {self.dim}"
        else:
            stored = unit_rows(np.stack([self._stored[r["id"]] for r in sample]).astype(np.float32))
            cosine = float(np.median(np.einsum("nd,nd->n", stored, feats)))
            if cosine < MIN_STORED_COSINE:
                problem = (f"stored embeddings do not match the encoder (median cosine {cosine:.3f} on {len(sample)} "
                           "images; scored with another CLIP?)")
        if problem is None:
            self.counts["checked"] = len(sample)
            return True
        self.notes.append(problem + ": every dataset image was encoded from its file")
        self._by_record.update((r["id"], f) for r, f in zip(sample, feats))   # already encoded: keep them
        self.counts["encoded_records"] += len(sample)
        return False

    # -- encoding --------------------------------------------------------------------------------
    def _encode_paths(self, paths: list[Path], what: str = "image") -> np.ndarray:
        self.check_interrupt()
        arrays = []
        for path in paths:
            try:
                arrays.append(load_image(path, self.image_size, "crop"))
            except FewShotError as e:
                problem = str(e).removeprefix(f"{path}: ")
                raise EvaluationError(path, f"{what} cannot be used: {problem}") from None
        feats = self._call_encode(arrays)
        return feats

    def _call_encode(self, arrays: list[np.ndarray]) -> np.ndarray:
        out = np.asarray(self.encode(arrays), dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != len(arrays) or out.shape[1] < 1:
            raise EvaluationError(None, f"encode returned shape {out.shape} for {len(arrays)} images; expected "
                                  f"[{len(arrays)}, D]")
        if not np.isfinite(out).all():
            raise EvaluationError(None, "encode returned NaN or Inf features")
        if self.dim is None:
            self.dim = int(out.shape[1])
        elif out.shape[1] != self.dim:
            raise EvaluationError(None, f"encode returned {out.shape[1]}-d features after {self.dim}-d ones")
        return unit_rows(out)

    def _stack(self, rows: list[np.ndarray]) -> np.ndarray:
        if not rows:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        return np.stack(rows).astype(np.float32)
