"""Mask IoU filter for mask-conditioned inpainting (issue #17, after DefFiller, "Mask-Conditioned
Diffusion for Salient Steel Surface Defect Generation").

A defect inpainted into a mask is only a usable labelled sample if it landed where the mask says:
DefFiller keeps a sample when the IoU between its conditioning mask and the mask a detector
predicts on the generated image is >= 0.6 (it generates with guidance 2-4 from <= 100 real samples
per class, and notes that defects under 10 px wide need targeted masks: one pixel of boundary
error costs a thin mask far more IoU than a wide one, so ``synthesis.defect_masks`` keeps masks at
least 10 px wide). The predicted mask comes from a detector, or from ``predicted_from_change``: what
changed between the source and the generated image.

Decisions are recorded like the CLIP filter's (``decide``): per item ``accepted``, ``reason``
(``ok`` | ``mask_iou_below`` | ``empty_prediction`` | ``size_mismatch``), the ``threshold`` applied
and ``provisional`` when the class has fewer than ``min_count`` IoUs (history + this run), so
its acceptance rate rests on too few samples to judge the masks or guidance by.

Refused (``MaskIoUError`` naming the item and both sizes): masks and image of different sizes;
they are never resized, since resampling shifts a thin defect's boundary by a pixel or more,
which is the very error the check measures. ``size_mismatch="reject"`` rejects such an item
instead (e.g. a generator that rounds sizes to multiples of 8). Also refused: a mask with values
other than 0/1 (``binarize=True`` thresholds at 0.5 instead), an empty conditioning mask, a
conditioning mask covering the whole image (no background: not a localised defect).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from ..common.records import ScoredItem
from .change_detect import ChangeMask, MaskIoUError, predicted_from_change, size_text

__all__ = ["ChangeMask", "IoUDecision", "MaskIoUError", "decide_iou", "iou", "parse_per_class", "predicted_from_change"]

METHOD = "mask_iou"
THRESHOLD = 0.6                  # DefFiller's filter
REASONS = ("ok", "mask_iou_below", "empty_prediction", "size_mismatch")
BINARY_TOLERANCE = 1e-3
MAX_PER_CLASS_CHARS = 64 * 1024   # the per_class text a user can send: a budget, never parsed past it


def _mask(m, where: str, binarize: bool) -> np.ndarray:
    """A 2-D bool mask from bool, 0/1 or (with ``binarize``) any numbers; a leading 1 is dropped
    (a ComfyUI MASK of one image)."""
    a = m.detach().cpu().numpy() if hasattr(m, "detach") else np.asarray(m)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or a.size == 0:
        raise MaskIoUError(f"a mask must be H x W, got shape {a.shape}", where)
    if a.dtype == bool:
        return a
    if not np.issubdtype(a.dtype, np.number):
        raise MaskIoUError(f"a mask must hold numbers, got {a.dtype}", where)
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise MaskIoUError("mask holds NaN or Inf", where)
    if binarize:
        return a > 0.5
    off = np.minimum(np.abs(a), np.abs(a - 1.0))
    if off.max() > BINARY_TOLERANCE:
        raise MaskIoUError(f"mask is not binary (a value {a.flat[int(off.argmax())]:g} is neither 0 nor 1); "
                           "threshold it, or pass binarize=True to keep values > 0.5", where)
    return a > 0.5


def iou(a, b, binarize: bool = False, where: str = "masks") -> float:
    """|a & b| / |a | b| of two masks of one size. Both empty: 1.0 (they agree: nothing asked,
    nothing found); ``decide_iou`` never gets there, as it refuses an empty conditioning mask."""
    a, b = _mask(a, f"{where} (first)", binarize), _mask(b, f"{where} (second)", binarize)
    if a.shape != b.shape:
        raise MaskIoUError(f"masks are {size_text(a.shape)} and {size_text(b.shape)}; they are not resized", where)
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


# ---- the decision ----------------------------------------------------------------------------

class IoUDecision(NamedTuple):
    accepted: bool
    iou: float | None
    threshold: float
    reason: str
    provisional: bool


def decide_iou(entries: Sequence, threshold: float = THRESHOLD, per_class: Mapping | None = None,
               min_count: int = 8, history: Mapping | None = None, binarize: bool = False,
               size_mismatch: str = "error") -> list[IoUDecision]:
    """Accept an entry when its IoU >= its class threshold (``per_class[label]``, else
    ``threshold``). An entry is an IoU already measured (a number, or ``{"label", "iou"}``) or a
    dict of masks: ``{"condition", "predicted"}`` with ``"label"`` and/or ``"item"``
    (a ``ScoredItem``: its label, its image's size checked, its instance map > 0 as the condition
    when none is given). A ``ScoredItem`` gets the decision in place: rejected with the IoU reason
    unless an earlier check rejected it already (the first failure stays the reason, as in
    ``decide``); ``extra["mask_iou"]`` holds the facts; its CLIP score and threshold are kept.
    ``history``: {label: earlier IoUs}, counted towards ``min_count``."""
    if isinstance(entries, np.ndarray):
        entries = entries.ravel().tolist()
    if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Sequence) or not entries:
        raise MaskIoUError("nothing to decide (expected a non-empty list)", "entries")
    thresholds = {None: _fraction("threshold", threshold)}
    thresholds.update({k: _fraction(f"per_class[{k!r}]", v) for k, v in (per_class or {}).items()})
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 0:
        raise MaskIoUError(f"min_count must be an integer >= 0, got {min_count!r}", "min_count")
    if size_mismatch not in ("error", "reject"):
        raise MaskIoUError(f"size_mismatch must be 'error' or 'reject', got {size_mismatch!r}", "size_mismatch")
    measured = [_measure(e, n, binarize, size_mismatch) for n, e in enumerate(entries)]
    counts: dict = {}
    for label, value, _, _ in measured:
        counts[label] = counts.get(label, 0) + (value is not None)
    out = []
    for (label, value, reason, item), entry in zip(measured, entries):
        thr = thresholds.get(label, thresholds[None])
        if reason is None:
            reason = "ok" if value >= thr else "mask_iou_below"
        earlier = len((history or {}).get(label) or ())
        decision = IoUDecision(reason == "ok", value, thr, reason, counts[label] + earlier < min_count)
        if item is not None:
            _record(item, decision)
        out.append(decision)
    return out


_NUMBER = (int, float, np.integer, np.floating)


def parse_per_class(text: str | None) -> dict[str, float]:
    """The node's ``per_class`` text: one ``label: threshold`` per line (blank lines skipped), each
    threshold in [0, 1], each label once. ``MaskIoUError`` names the line and what is wrong."""
    from ..common.labels import label_problem, normalise_label

    text = text or ""
    if len(text) > MAX_PER_CLASS_CHARS:
        raise MaskIoUError(f"is {len(text)} characters long; at most {MAX_PER_CLASS_CHARS}", "per_class")
    out: dict[str, float] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"per_class line {line_no} ({line.strip()[:80]!r})"
        key, sep, value = line.partition(":")
        label = normalise_label(key)
        if not sep or not label:
            raise MaskIoUError("expected 'label: threshold'", where)
        problem = label_problem(label)
        if problem:
            raise MaskIoUError(problem, where)
        if label in out:
            raise MaskIoUError(f"label {label!r} is given twice", where)
        try:
            number = float(value)
        except ValueError:
            raise MaskIoUError(f"threshold {value.strip()!r} is not a number; expected 'label: threshold'", where) from None
        out[label] = _fraction(where, number)
    return out


def _fraction(name, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, _NUMBER) or not 0 <= value <= 1:
        raise MaskIoUError(f"must be a number in [0, 1], got {value!r}", name)
    return float(value)


def _measure(entry, n: int, binarize: bool, size_mismatch: str) -> tuple:
    """(label, iou or None, reason when decided here or None, ScoredItem or None)."""
    where = f"entry {n}"
    if isinstance(entry, _NUMBER) and not isinstance(entry, (bool, np.bool_)):
        return None, _fraction(where, entry), None, None
    if not isinstance(entry, Mapping):
        raise MaskIoUError(f"is a {type(entry).__name__}; expected an IoU or a dict", where)
    item = entry.get("item")
    if item is not None and not isinstance(item, ScoredItem):
        raise MaskIoUError(f"'item' is a {type(item).__name__}, expected a ScoredItem", where)
    label = entry.get("label", item.label if item is not None else None)
    if item is not None and item.index is not None:
        where += f" (sampler index {item.index})"
    if label is not None:
        where += f" (label {label!r})"
    if "iou" in entry:
        return label, _fraction(f"{where} iou", entry["iou"]), None, item
    condition = entry.get("condition")
    if condition is None and item is not None and item.instance_map is not None:
        condition = np.asarray(item.instance_map) > 0
    if condition is None or entry.get("predicted") is None:
        raise MaskIoUError("needs 'iou', or both 'condition' and 'predicted' masks", where)
    cond = _mask(condition, f"{where} conditioning mask", binarize)
    pred = _mask(entry["predicted"], f"{where} predicted mask", binarize)
    sizes = [("conditioning mask", cond.shape), ("predicted mask", pred.shape)]
    if item is not None:
        sizes.append(("image", np.asarray(item.image).shape[:2]))
    odd = [(name, shape) for name, shape in sizes[1:] if tuple(shape) != cond.shape]
    if odd:
        if size_mismatch == "error":
            raise MaskIoUError(f"the conditioning mask is {size_text(cond.shape)} but the {odd[0][0]} is "
                               f"{size_text(odd[0][1])}; masks are refused, not resized", where)
        return label, None, "size_mismatch", item
    if not cond.any():
        raise MaskIoUError("the conditioning mask is empty; it asks for no defect", where)
    if cond.all():
        raise MaskIoUError("the conditioning mask covers the whole image; it is no localised defect", where)
    if not pred.any():
        return label, 0.0, "empty_prediction", item
    return label, iou(cond, pred, where=where), None, item


def _record(item: ScoredItem, d: IoUDecision) -> None:
    item.extra = dict(item.extra or {})
    item.extra["mask_iou"] = {"method": METHOD, "iou": d.iou, "threshold": d.threshold, "reason": d.reason,
                              "accepted": d.accepted, "provisional": d.provisional}
    if item.accepted and not d.accepted:
        item.accepted, item.reason = False, d.reason
    elif item.accepted and item.reason == "unfiltered":
        item.reason = "ok"
    if item.method is None:
        item.method, item.threshold = METHOD, d.threshold
    item.provisional = item.provisional or d.provisional
