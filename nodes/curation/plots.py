"""Per-class score histograms with the threshold line, drawn with Pillow only (no matplotlib)."""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PANEL_W, PANEL_H = 260, 170
PAD, HEADER, FOOTER = 8, 30, 16
BINS = 20
MIN_SPAN = 0.02          # narrowest x range of a panel (cosine units)
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


@functools.lru_cache(maxsize=1)
def _font():
    """Pillow's default font, loaded once per process rather than once per plot."""
    return ImageFont.load_default()


def score_histograms(scores_by_label: dict[str, np.ndarray], thresholds: dict[str, float],
                     accepted_counts: dict[str, int], rejected_counts: dict[str, int],
                     columns: int | None = None) -> np.ndarray:
    """One panel per class in a grid -> H x W x 3 uint8 image.

    Bars left of the threshold are drawn in red, the rest in green; the red line marks the
    threshold and the header gives label, accepted / rejected counts and the threshold value
    (``header_text``). Missing thresholds are not drawn; a class in neither count dict shows no
    counts, one in only one of them has 0 of the other.
    """
    font = _font()
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
    draw.text((x0 + PAD, y0 + 16), header_text(scores.size, thr, n_acc, n_rej), fill=AXIS, font=font)

    left, right = x0 + PAD, x0 + PANEL_W - PAD
    top, bottom = y0 + HEADER + 4, y0 + PANEL_H - FOOTER
    draw.line([(left, bottom), (right, bottom)], fill=AXIS)
    draw.rectangle([x0, y0, x0 + PANEL_W - 1, y0 + PANEL_H - 1], outline=(220, 220, 220))
    if scores.size == 0:
        draw.text((left, (top + bottom) // 2), "no scores", fill=AXIS, font=font)
        return
    lo, hi = axis_range(scores, thr)
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
    start, end = axis_labels(lo, hi)
    draw.text((left, bottom + 2), start, fill=AXIS, font=font)
    if end is not None:
        draw.text((right - draw.textlength(end, font=font), bottom + 2), end, fill=AXIS, font=font)


def header_text(n_scores: int, thr: float | None, n_acc: int | None, n_rej: int | None) -> str:
    """The panel's second header line: how many scores, the kept / rejected counts and the
    threshold. A class with no counts at all (scores from the dataset's history only, nothing
    decided in this run) shows no counts; when only one of the two is known the other is 0 (tally
    counts every decided entry, so a class missing from one dict had none of that kind)."""
    facts = [f"n={n_scores}"]
    if n_acc is not None or n_rej is not None:
        facts.append(f"kept {n_acc or 0} / rejected {n_rej or 0}")
    if thr is not None:
        facts.append(f"thr {thr:.3f}")
    return "  ".join(facts)


def axis_range(scores: np.ndarray, thr) -> tuple[float, float]:
    """The x range of a panel: the scores (and the threshold) with a 5 % margin, at least
    ``MIN_SPAN`` wide around their middle, so a single score or identical scores still get a
    window whose two ends differ."""
    values = scores if thr is None or not np.isfinite(thr) else np.append(scores, thr)
    lo, hi = float(values.min()), float(values.max())
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    if hi - lo < MIN_SPAN:
        mid = 0.5 * (lo + hi)
        lo, hi = mid - MIN_SPAN / 2, mid + MIN_SPAN / 2
    if not hi > lo:   # a magnitude where MIN_SPAN is below float resolution
        lo, hi = float(np.nextafter(lo, -np.inf)), float(np.nextafter(hi, np.inf))
    return lo, hi


def axis_labels(lo: float, hi: float) -> tuple[str, str | None]:
    """The texts under the two ends of the axis: 3 decimals, more where that would print the same
    number twice; if even 6 decimals cannot tell them apart, one label (the second is None)."""
    for digits in range(3, 7):
        start, end = f"{lo:.{digits}f}", f"{hi:.{digits}f}"
        if start != end:
            return start, end
    return start, None


REAL_DOT, SYNTH_DOT = (40, 90, 200), (220, 120, 30)
SCATTER_SIDE = 320


def embedding_scatter(real_xy: np.ndarray, synth_xy: np.ndarray, title: str) -> np.ndarray:
    """A 2-D picture of a class's real (blue) and synthetic (orange) embeddings, e.g. their first two
    principal axes (``fidelity.pca_2d``) -> H x W x 3 uint8. Both sets share one scale."""
    font = _font()
    img = Image.new("RGB", (SCATTER_SIDE, SCATTER_SIDE + HEADER), BG)
    draw = ImageDraw.Draw(img)
    draw.text((PAD, 3), title if len(title) <= 48 else title[:47] + "…", fill=TEXT, font=font)
    draw.text((PAD, 16), f"real {len(real_xy)} (blue)  synthetic {len(synth_xy)} (orange)", fill=AXIS, font=font)
    left, top, right, bottom = PAD, HEADER + PAD, SCATTER_SIDE - PAD, SCATTER_SIDE + HEADER - PAD
    draw.rectangle([left, top, right, bottom], outline=(220, 220, 220))
    both = np.concatenate([np.asarray(real_xy, float).reshape(-1, 2), np.asarray(synth_xy, float).reshape(-1, 2)])
    if len(both) == 0:
        return np.asarray(img, dtype=np.uint8)
    lo, hi = both.min(axis=0), both.max(axis=0)
    span = np.maximum(hi - lo, 1e-9)

    def dot(xy, colour, r):
        x = left + 6 + (xy[0] - lo[0]) / span[0] * (right - left - 12)
        y = bottom - 6 - (xy[1] - lo[1]) / span[1] * (bottom - top - 12)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)

    for xy in np.asarray(synth_xy, float).reshape(-1, 2):
        dot(xy, SYNTH_DOT, 2)
    for xy in np.asarray(real_xy, float).reshape(-1, 2):   # on top: few and the reference
        dot(xy, REAL_DOT, 3)
    return np.asarray(img, dtype=np.uint8)
