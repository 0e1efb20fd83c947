"""One queue run through the CLIP filter: score the images, then decide them per class against
this run plus the dataset's stored history (plain Python; the node only converts ComfyUI values)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..common.labels import default_class_text
from ..common.records import ScoredBatch, ScoredItem
from ..scoring.similarity import TextEmbeddingCache, score_items, shared_text_memo
from ..store import background
from ..store.reader import load_history, load_history_embeddings
from ..store.reconcile import ensure_consistent
from .decide import decide
from .plots import score_histograms, tally


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


def filter_run(bundle, items: list[ScoredItem], method, *, text_side: str, min_count: int, margin=None,
               near_dup=None, dataset_dir=None, batch_size: int = 32,
               progress: Callable[[int, int], None] | None = None) -> tuple[ScoredBatch, dict | None]:
    """Score and decide ``items`` in place; (batch, the history scores used) for the plot."""
    # class texts: for the margin check, and the fallback of class_text scoring without metadata
    texts = class_texts(items) if margin is not None or text_side != "prompt" else None
    # a fresh cache per run (the same text batches as without one), backed by the model's memo: a
    # one-image run encodes its class text once per process, not once per queue run
    cache = TextEmbeddingCache(bundle, memo=shared_text_memo(bundle))
    score_items(bundle, items, text_side=text_side, batch_size=batch_size, progress=progress, class_texts=texts,
                text_cache=cache)
    history = history_emb = None
    if dataset_dir is not None and dataset_dir.exists():
        background.flush(dataset_dir)    # this process's items still being written are history too
        ensure_consistent(dataset_dir)   # a crash may have left the dataset half-written
        history = load_history(dataset_dir)
        history_emb = load_history_embeddings(dataset_dir) if near_dup is not None else None
    batch = decide(items, method, history=history, min_count=min_count, margin=margin, near_dup=near_dup,
                   history_embeddings=history_emb)
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
        lines.append(f"{label}: kept {kept}/{len(mine)}"
                     + (f", threshold {threshold:.4f} ({method}{provisional})" if threshold is not None else ""))
    return "\n".join(lines)
