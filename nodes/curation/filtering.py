"""One queue run through the CLIP filter: score the images, then decide them per class against
this run plus the dataset's stored history (plain Python; the node only converts ComfyUI values)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..common.labels import default_class_text
from ..common.records import ScoredBatch, ScoredItem
from ..scoring.similarity import TextEmbeddingCache, score_items, shared_text_memo
from ..store import background
from ..store.reader import load_history, load_history_embeddings, load_real_embeddings
from ..store.reconcile import ensure_consistent
from .decide import decide
from .plots import score_histograms, tally
from .real_anchor import (DEFAULT_FLOOR_SLACK, DEFAULT_TOP_K, RealBank, bank_summary, check_basis, check_same_model,
                          clip_identity, real_scores)

MAX_REAL_PHOTOS = 4096          # real photos encoded per run at most (each once per process and model)
_REAL_CACHE: dict[tuple[str, str], np.ndarray] = {}    # (clip identity, file sha256) -> embedding


def checks_from_widgets(class_margin: float | None, near_duplicate: float | None) -> tuple:
    """The widgets' "off" values (class_margin -1, near_duplicate 0) -> None; else the value."""
    margin = None if class_margin is None or class_margin < 0 else float(class_margin)
    near = None if not near_duplicate or near_duplicate <= 0 else float(near_duplicate)
    return margin, near


def class_texts(items: list[ScoredItem]) -> dict[str, str]:
    """Each class's CLIP text: the pack's ``clip_text`` from the sampler metadata, else the default."""
    texts: dict[str, str] = {}
    for it in items:
        texts.setdefault(it.label, it.metadata.get("clip_text") or default_class_text(it.label))
    return texts


def real_bank_for(bundle, realset=None, dataset_dir=None, batch_size: int = 32) -> tuple[RealBank | None, str | None]:
    """The real photos' embeddings: the few-shot node's set (encoded once per process and CLIP, by
    file hash) and the dataset's ``source: real`` records with a stored embedding (never re-encoded).
    (bank, None), or (None, why there is none)."""
    model = clip_identity(bundle.describe())
    bank = RealBank(model=None)
    if dataset_dir is not None and dataset_dir.exists():
        stored = load_real_embeddings(dataset_dir)
        by_model: dict = {}
        for label, key, vec, made_by in stored:
            by_model.setdefault(made_by, []).append((label, key, vec))
        for made_by, rows in by_model.items():
            bank.add(rows, made_by, "the dataset's real records")
    if realset is not None and len(realset.images):
        rows = _encode_realset(bundle, realset, model, batch_size)
        bank.add(rows, model, "DTGen Few-Shot Images")
        bank.encoded = {key: vec for _, key, vec in rows}
    if not bank:
        return None, ("no real photos: connect real_images (DTGen Few-Shot Images) or import them into the "
                      "dataset through the Dataset Writer")
    return bank, None


def _encode_realset(bundle, realset, model: str, batch_size: int) -> list[tuple[str, str, np.ndarray]]:
    from ..fewshot.pixels import load_image
    from ..fewshot.realset import file_digest
    from ..scoring.errors import ClipFilterError
    from ..scoring.similarity import encode_images

    if len(realset.images) > MAX_REAL_PHOTOS:
        raise ClipFilterError(f"{len(realset.images)} real photos; at most {MAX_REAL_PHOTOS} are encoded for the "
                              "real-anchored score (use part 'train' with a holdout, or fewer photos)", "real_images")
    digests = [_digest(im.path, file_digest) for im in realset.images]
    if len(_REAL_CACHE) + len(digests) > 4 * MAX_REAL_PHOTOS:   # bounded: start afresh rather than grow
        _REAL_CACHE.clear()
    todo = [i for i, d in enumerate(digests) if (model, d) not in _REAL_CACHE]
    side = int(max(bundle.image_size))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        feats = encode_images(bundle, [load_image(realset.images[i].path, side, "crop") for i in chunk], batch_size)
        for i, vec in zip(chunk, feats):
            _REAL_CACHE[(model, digests[i])] = np.asarray(vec, dtype=np.float32)
    return [(im.label, d, _REAL_CACHE[(model, d)]) for im, d in zip(realset.images, digests)]


_DIGESTS: dict[tuple, str] = {}    # (path, size, mtime_ns) -> sha256: a photo is hashed once while unchanged


def _digest(path, file_digest) -> str:
    import os

    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return file_digest(path)   # its one-line error names the file
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        if len(_DIGESTS) > 4 * MAX_REAL_PHOTOS:
            _DIGESTS.clear()
        _DIGESTS[key] = file_digest(path)
    return _DIGESTS[key]


def anchor_items(items: list[ScoredItem], bank: RealBank | None, model: str | None, top_k: int,
                 floor_slack: float = DEFAULT_FLOOR_SLACK) -> None:
    """Add the real-anchored score (``real_anchor.real_scores``) to each scored item's ``extra``."""
    if bank is None or not items:
        return
    dim = int(np.asarray(items[0].embedding).reshape(-1).shape[0])
    check_same_model(bank, model, dim)
    emb = np.stack([np.asarray(it.embedding, dtype=np.float32).reshape(-1) for it in items])
    for item, facts in zip(items, real_scores(emb, [it.label for it in items], bank, top_k, floor_slack)):
        item.extra.update(facts)


def filter_run(bundle, items: list[ScoredItem], method, *, text_side: str, min_count: int, margin=None,
               near_dup=None, dataset_dir=None, batch_size: int = 32,
               progress: Callable[[int, int], None] | None = None, basis: str = "text", realset=None,
               real_top_k: int = DEFAULT_TOP_K,
               real_floor_slack: float = DEFAULT_FLOOR_SLACK) -> tuple[ScoredBatch, dict | None]:
    """Score and decide ``items`` in place; (batch, the history scores used) for the plot.

    ``basis`` (``real_anchor.BASES``), ``real_floor_slack`` (the calibrated floor's slack) and the
    real photos (``realset`` and the dataset's real records): see ``decide`` and ``real_anchor``. Without real photos every item is decided on its text score,
    exactly as before, and ``batch.config["real_anchor"]`` says the check was skipped and why."""
    check_basis(basis)
    # class texts: for the margin check, and the fallback of class_text scoring without metadata
    texts = class_texts(items) if margin is not None or text_side != "prompt" else None
    # a fresh cache per run (the same text batches as without one), backed by the model's memo: a
    # one-image run encodes its class text once per process, not once per queue run
    cache = TextEmbeddingCache(bundle, memo=shared_text_memo(bundle))
    score_items(bundle, items, text_side=text_side, batch_size=batch_size, progress=progress, class_texts=texts,
                text_cache=cache)
    model = clip_identity(bundle.describe())
    for item in items:
        item.extra["clip_model"] = model   # which CLIP made the stored embedding (checked against real ones)
    history = history_emb = real_history = None
    if dataset_dir is not None and dataset_dir.exists():
        background.flush(dataset_dir)    # this process's items still being written are history too
        ensure_consistent(dataset_dir)   # a crash may have left the dataset half-written
        history = load_history(dataset_dir)
        history_emb = load_history_embeddings(dataset_dir) if near_dup is not None else None
        real_history = load_history(dataset_dir, key="real_score") if basis != "text" else None
    bank, why = real_bank_for(bundle, realset, dataset_dir, batch_size)
    anchor_items(items, bank, model, real_top_k, real_floor_slack)
    if bank is None:   # said in the manifest too: this image was checked against text only
        for item in items:
            item.extra["real_skipped"] = why
    batch = decide(items, method, history=history, min_count=min_count, margin=margin, near_dup=near_dup,
                   history_embeddings=history_emb, basis=basis, real_history=real_history)
    batch.config["real_anchor"] = bank_summary(bank, [it.label for it in items], why)
    if bank is not None and bank.encoded:   # the writer stores them with the real records
        batch.config["real_embeddings"] = dict(bank.encoded)
        batch.config["real_model"] = model
    return batch, history


def run_plot(batch: ScoredBatch, history: dict | None) -> np.ndarray:
    """The filter's plot: stored scores plus this run's, this run's thresholds and decisions."""
    entries = [(label, float(s), None, None) for label, scores in (history or {}).items() for s in scores]
    entries += [(it.label, it.score, None, it.accepted) for it in batch.items]
    scores, _, accepted, rejected = tally(entries)
    return score_histograms(scores, batch.thresholds, accepted, rejected)


def filter_summary(batch: ScoredBatch) -> str:
    """The filter node's text: per class, how many of this run were kept and the threshold."""
    lines = []
    for label in sorted({it.label for it in batch.items}):
        mine = [it for it in batch.items if it.label == label]
        kept = sum(it.accepted for it in mine)
        threshold = batch.thresholds.get(label)
        method = next((it.method for it in mine if it.method), "")
        provisional = " provisional" if any(it.provisional for it in mine) else ""
        real = batch.config.get("real_thresholds", {}).get(label)
        lines.append(f"{label}: kept {kept}/{len(mine)}"
                     + (f", threshold {threshold:.4f} ({method}{provisional})" if threshold is not None else "")
                     + (f", real-anchored threshold {real:.4f}" if real is not None else ""))
    return "\n".join(lines + list(batch.config.get("real_anchor", [])))
