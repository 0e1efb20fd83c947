"""Offline refilter: the filter's decision code re-applied to a stored dataset (plain Python).

Stored records carry their scores (and embeddings), so changing the method or ``k`` recomputes
nothing but thresholds. Used by DTGen Dataset Finalize and by ``python -m runner redecide``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .decide import refilter


def decide_fn_for(method, min_count: int = 8, margin=None, near_dup=None):
    """A ``finalize`` decision callable: records -> [(accepted, threshold, reason, provisional)].

    The threshold is always re-applied. The class-margin and near-duplicate checks are re-run only
    when ``margin`` / ``near_dup`` is given; otherwise a record the filter rejected for that reason
    stays rejected (a re-threshold must not bring such images back).
    """
    kept_reasons = {r for r, opt in (("class_margin", margin), ("near_duplicate", near_dup)) if opt is None}

    def decide_records(records: list[dict]) -> list[tuple]:
        scored = [r for r in records if r.get("score") is not None]
        kept = [r.get("reason") if r.get("reason") in kept_reasons else None for r in scored]
        result = refilter(scored, method, min_count=min_count, margin=margin, near_dup=near_dup,
                          kept_rejections=kept) if scored else None
        by_id = {id(orig): new for orig, new in zip(scored, result.records if result else [])}
        out = []
        for rec in records:
            new = by_id.get(id(rec))
            if new is None:  # stored without a score (unfiltered graph): keep its decision
                out.append((rec.get("decision") == "accepted", rec.get("threshold"), rec.get("reason", "unfiltered"),
                            bool(rec.get("provisional"))))
            else:
                out.append((new["accepted"], new["threshold"], new["reason"], new["provisional"]))
        return out

    decide_records.method = method.name  # finalize records it in the manifest
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
