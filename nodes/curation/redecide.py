"""Offline refilter: the filter's decision code re-applied to a stored dataset (plain Python).

Stored records carry their scores (and embeddings), so changing the method or ``k`` recomputes
nothing but thresholds. Used by DTGen Dataset Finalize and by ``python -m nodes.filtering.offline``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .decide import refilter
from .thresholds import method_from


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


def histogram_image(records: list[dict], out_path: Path) -> Path:
    """Per-class score histograms of stored records, with each class's threshold, as a PNG."""
    from PIL import Image

    from .plots import score_histograms

    scores: dict[str, list] = {}
    thresholds: dict[str, float] = {}
    acc: dict[str, int] = {}
    rej: dict[str, int] = {}
    for rec in records:
        label = rec["label"]
        if rec.get("score") is not None:
            scores.setdefault(label, []).append(float(rec["score"]))
        if rec.get("threshold") is not None:
            thresholds[label] = float(rec["threshold"])
        bucket = acc if rec.get("decision") == "accepted" else rej
        bucket[label] = bucket.get(label, 0) + 1
    img = score_histograms({k: np.asarray(v) for k, v in scores.items()}, thresholds, acc, rej)
    Image.fromarray(img).save(out_path)
    return Path(out_path)


def main(argv=None) -> int:
    from .finalize import finalize

    parser = argparse.ArgumentParser(prog="python -m nodes.filtering.offline",
                                     description="Re-decide a stored DTGen dataset with another threshold "
                                                 "method or k, without re-encoding any image.")
    parser.add_argument("dataset_dir")
    parser.add_argument("--method", default="mean_std", help="mean_std | median_mad | percentile | fixed | gmm")
    parser.add_argument("--k", type=float, default=1.5)
    parser.add_argument("--keep-percent", type=float, default=90.0)
    parser.add_argument("--fixed-threshold", type=float, default=0.25)
    parser.add_argument("--min-count", type=int, default=8)
    parser.add_argument("--class-margin", type=float, default=None,
                        help="re-run the class-margin check with this margin (default: keep the filter's verdicts)")
    parser.add_argument("--near-duplicate", type=float, default=None,
                        help="re-run the near-duplicate check at this cosine (default: keep the filter's verdicts)")
    parser.add_argument("--split", default=None, help="train,val,test fractions, e.g. 0.8,0.1,0.1")
    args = parser.parse_args(argv)
    try:
        method = method_from(args.method, args.k, args.keep_percent, args.fixed_threshold)
        finalize(args.dataset_dir, decide_fn=decide_fn_for(method, args.min_count, args.class_margin, args.near_duplicate), split=args.split,
                 plot_fn=histogram_image)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
