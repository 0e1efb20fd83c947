"""Offline refilter: the filter's decision code re-applied to a stored dataset (plain Python).

Stored records carry their scores (and embeddings), so changing the method or ``k`` recomputes
nothing but thresholds. Used by DTGen Dataset Finalize and by ``python -m runner redecide``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..store.reader import is_real
from .decide import refilter
from .real_anchor import DEFAULT_TOP_K, REAL_FACTS, RealBank, check_basis, check_same_model, real_scores


def real_bank_of(records: list[dict]) -> RealBank | None:
    """The real photos' stored embeddings among ``records`` (each with ``embedding`` attached, as
    finalize passes them), or None when no real record has one."""
    rows = [r for r in records if is_real(r) and r.get("embedding") is not None]
    if not rows:
        return None
    bank = RealBank()
    for model in dict.fromkeys((r.get("extra") or {}).get("clip_model") for r in rows):
        bank.add([(r["label"], r["id"], r["embedding"]) for r in rows
                  if (r.get("extra") or {}).get("clip_model") == model], model, "the dataset's real records")
    return bank


def with_real_scores(records: list[dict], top_k: int = DEFAULT_TOP_K) -> tuple[list[dict], str | None]:
    """The scored records with their real-anchored score recomputed from the stored embeddings
    against every stored real photo (a class's photos imported after the image was scored count
    too); a record without an embedding keeps the score the filter stored. (records, why skipped)."""
    bank = real_bank_of(records)
    if bank is None:
        return records, "no real photos with stored embeddings in the dataset"
    todo = [r for r in records if not is_real(r) and r.get("score") is not None and r.get("embedding") is not None]
    by_model: dict = {}
    for r in todo:
        by_model.setdefault((r.get("extra") or {}).get("clip_model"), []).append(r)
    fresh = {}
    for model, recs in by_model.items():
        check_same_model(bank, model, int(len(recs[0]["embedding"])))
        for rec, facts in zip(recs, real_scores([r["embedding"] for r in recs], [r["label"] for r in recs], bank, top_k)):
            fresh[id(rec)] = facts
    out = []
    for rec in records:
        facts = fresh.get(id(rec))
        if facts is None:
            out.append(rec)
            continue
        extra = {k: v for k, v in (rec.get("extra") or {}).items() if k not in REAL_FACTS}
        out.append(dict(rec, extra={**extra, **facts}))
    return out, None


def decide_fn_for(method, min_count: int = 8, margin=None, near_dup=None, basis: str = "text",
                  real_top_k: int = DEFAULT_TOP_K):
    """A ``finalize`` decision callable: records -> [(accepted, threshold, reason, provisional[, extra])].

    The threshold is always re-applied. The class-margin and near-duplicate checks are re-run only
    when ``margin`` / ``near_dup`` is given; otherwise a record the filter rejected for that reason
    stays rejected (a re-threshold must not bring such images back).
    ``basis`` real / both / real_calibrated / both_calibrated: decide on the real-anchored score too (``decide``), recomputed from the
    stored embeddings (``with_real_scores``); the fifth element is the record's updated ``extra``
    (real score, decided_on, real threshold). ``decide_records.real_note`` says when it was skipped.
    """
    check_basis(basis)
    kept_reasons = {r for r, opt in (("class_margin", margin), ("near_duplicate", near_dup)) if opt is None}

    def decide_records(records: list[dict]) -> list[tuple]:
        if basis != "text":
            records, decide_records.real_note = with_real_scores(records, real_top_k)
        scored = [r for r in records if r.get("score") is not None]
        kept = [r.get("reason") if r.get("reason") in kept_reasons else None for r in scored]
        result = refilter(scored, method, min_count=min_count, margin=margin, near_dup=near_dup,
                          kept_rejections=kept, basis=basis) if scored else None
        by_id = {id(orig): new for orig, new in zip(scored, result.records if result else [])}
        out = []
        for rec in records:
            new = by_id.get(id(rec))
            if new is None:  # stored without a score (unfiltered graph): keep its decision
                out.append((rec.get("decision") == "accepted", rec.get("threshold"), rec.get("reason", "unfiltered"),
                            bool(rec.get("provisional"))))
            elif basis == "text":
                out.append((new["accepted"], new["threshold"], new["reason"], new["provisional"]))
            else:
                out.append((new["accepted"], new["threshold"], new["reason"], new["provisional"], new.get("extra") or {}))
        return out

    decide_records.method = method.name  # finalize records it in the manifest
    decide_records.real_note = None
    return decide_records


def histogram_image(records: list[dict], out_path: Path) -> np.ndarray:
    """Per-class score histograms of stored records, with each class's threshold, saved as a PNG;
    returns the image (H x W x 3 uint8)."""
    from PIL import Image

    from .plots import score_histograms, tally

    img = score_histograms(*tally((r["label"], r.get("score"), r.get("threshold"), r.get("decision") == "accepted")
                                  for r in records))
    Image.fromarray(img).save(out_path)
    return img
