"""Per-class score histograms with the threshold line, drawn with Pillow only (no matplotlib)."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PANEL_W, PANEL_H = 260, 170
PAD, HEADER, FOOTER = 8, 30, 16
BINS = 20
MAX_COLUMNS = 4
BG, AXIS, TEXT = (255, 255, 255), (90, 90, 90), (20, 20, 20)
KEPT, DROPPED, LINE = (70, 150, 90), (200, 110, 90), (200, 30, 30)


def tally(entries) -> tuple[dict, dict, dict, dict]:
    """``(label, score | None, threshold | None, accepted | None)`` entries -> the four arguments
    of ``score_histograms``: scores per label, the last threshold per label, accepted and rejected
    counts (entries with ``accepted`` None are not counted)."""
    scores: dict[str, list] = {}
    thresholds: dict[str, float] = {}
    accepted: dict[str, int] = {}
    rejected: dict[str, int] = {}
    for label, score, threshold, ok in entries:
        if score is not None:
            scores.setdefault(label, []).append(float(score))
        if threshold is not None:
            thresholds[label] = float(threshold)
        if ok is not None:
            bucket = accepted if ok else rejected
            bucket[label] = bucket.get(label, 0) + 1
    return {k: np.asarray(v) for k, v in scores.items()}, thresholds, accepted, rejected


def score_histograms(scores_by_label: dict[str, np.ndarray], thresholds: dict[str, float],
                     accepted_counts: dict[str, int], rejected_counts: dict[str, int],
                     columns: int | None = None) -> np.ndarray:
    """One panel per class in a grid -> H x W x 3 uint8 image.

    Bars left of the threshold are drawn in red, the rest in green; the red line marks the
    threshold and the header gives label, accepted / rejected counts and the threshold value.
    Missing thresholds or counts are simply not drawn.
    """
    font = ImageFont.load_default()
    labels = list(scores_by_label)
    if not labels:
        img = Image.new("RGB", (PANEL_W, 40), BG)
        ImageDraw.Draw(img).text((PAD, 12), "no scores to plot", fill=TEXT, font=font)
        return np.asarray(img, dtype=np.uint8)
    cols = columns or min(MAX_COLUMNS, len(labels))
    rows = math.ceil(len(labels) / cols)
    img = Image.new("RGB", (cols * PANEL_W, rows * PANEL_H), BG)
    draw = ImageDraw.Draw(img)
    for n, label in enumerate(labels):
        x0, y0 = (n % cols) * PANEL_W, (n // cols) * PANEL_H
        _panel(draw, font, x0, y0, label, np.asarray(scores_by_label[label], dtype=np.float64).ravel(),
               thresholds.get(label), accepted_counts.get(label), rejected_counts.get(label))
    return np.asarray(img, dtype=np.uint8)


def _panel(draw, font, x0, y0, label, scores, thr, n_acc, n_rej) -> None:
    scores = scores[np.isfinite(scores)]
    name = label if len(label) <= 34 else label[:33] + "…"
    draw.text((x0 + PAD, y0 + 3), name, fill=TEXT, font=font)
    facts = [f"n={scores.size}"]
    if n_acc is not None or n_rej is not None:
        facts.append(f"kept {n_acc if n_acc is not None else '?'} / rejected "
                     f"{n_rej if n_rej is not None else '?'}")
    if thr is not None:
        facts.append(f"thr {thr:.3f}")
    draw.text((x0 + PAD, y0 + 16), "  ".join(facts), fill=AXIS, font=font)

    left, right = x0 + PAD, x0 + PANEL_W - PAD
    top, bottom = y0 + HEADER + 4, y0 + PANEL_H - FOOTER
    draw.line([(left, bottom), (right, bottom)], fill=AXIS)
    draw.rectangle([x0, y0, x0 + PANEL_W - 1, y0 + PANEL_H - 1], outline=(220, 220, 220))
    if scores.size == 0:
        draw.text((left, (top + bottom) // 2), "no scores", fill=AXIS, font=font)
        return
    lo, hi = _range(scores, thr)
    counts, edges = np.histogram(scores, bins=BINS, range=(lo, hi))
    scale = (bottom - top) / max(int(counts.max()), 1)
    to_x = lambda v: left + (v - lo) / (hi - lo) * (right - left)
    for c, a, b in zip(counts, edges[:-1], edges[1:]):
        if c:
            colour = DROPPED if thr is not None and b <= thr else KEPT
            draw.rectangle([to_x(a) + 1, bottom - c * scale, max(to_x(b) - 1, to_x(a) + 1), bottom],
                           fill=colour)
    if thr is not None:
        tx = to_x(thr)
        draw.line([(tx, top - 2), (tx, bottom)], fill=LINE, width=2)
    draw.text((left, bottom + 2), f"{lo:.3f}", fill=AXIS, font=font)
    end = f"{hi:.3f}"
    draw.text((right - draw.textlength(end, font=font), bottom + 2), end, fill=AXIS, font=font)


def _range(scores: np.ndarray, thr) -> tuple[float, float]:
    values = scores if thr is None or not np.isfinite(thr) else np.append(scores, thr)
    lo, hi = float(values.min()), float(values.max())
    pad = 0.05 * (hi - lo) if hi > lo else 0.01   # identical scores: a small window around them
    return lo - pad, hi + pad
