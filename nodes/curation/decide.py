"""Accept / reject scored items per class: adaptive threshold, class margin, near-duplicates.

One decision routine (``_decide``) serves both a live run (``decide`` on ``ScoredItem``s) and
stored records (``refilter`` on dicts, no re-encoding), so the dataset's finalize step and an
offline refilter reproduce exactly what the node did. Checks run in this order and the first
failure is the reason: ``below_threshold`` -> ``below_real_threshold`` -> ``class_margin`` ->
``near_duplicate``.

``basis`` says what the threshold is applied to: ``text`` (the image-text score, the default and
the only one before real-anchored scores), ``real`` (the real-anchored score, ``real_anchor.py``)
or ``both`` (each through its own per-class threshold of the same method; both must pass);
``real_calibrated`` / ``both_calibrated`` are ``real`` / ``both`` with the real-anchored threshold
taken from the real photos themselves (``real_floor``, see ``real_anchor``) instead of from the
generated images' real scores; a class whose floor is missing (fewer than 3 photos) falls back to
the method's threshold (``decided_on`` real / both, ``config["real_calibration_skipped"]`` says why).
An image whose class has no real-anchored score is decided on its text score, and its ``decided_on``
says so.
With ``basis="text"`` nothing about real scores is added to an item or record.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..common.vectors import unit_rows
from ..common.records import ScoredBatch, ScoredItem
from ..scoring.errors import ClipFilterError
from .real_anchor import CALIBRATED, MIN_CALIBRATION_PHOTOS, check_basis
from .thresholds import ThresholdMethod, get_method


@dataclass
class RefilterResult:
    records: list[dict]                       # copies with accepted/reason/threshold/... updated
    thresholds: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def decide(items: list[ScoredItem], method, history: dict | None = None, min_count: int = 8,
           margin: float | None = None, near_dup: float | None = None,
           history_embeddings: dict | None = None,
           class_orders: dict | None = None, basis: str = "text", real_history: dict | None = None) -> ScoredBatch:
    """Decide every item in place and return them as a ``ScoredBatch``.

    method: a ``ThresholdMethod`` or a name from ``METHODS``.
    history: {label: earlier scores}; the class population is history + this run's scores, and
        a class with fewer than ``min_count`` of them is decided by the same rule but marked
        ``provisional``.
    margin: if set, reject when another class text scores higher than own class text minus
        ``margin`` (needs ``item.extra["class_scores"]``). For classes with an ``order``
        (``item.metadata["order"]`` or ``class_orders``), neighbours closer than 2 steps are
        not compared: adjacent grades legitimately look alike.
    near_dup: if set, reject an item whose image embedding has cosine >= near_dup with an item of
        the same class accepted earlier in this run or with ``history_embeddings[label]``.
    basis: ``text`` | ``real`` | ``both`` | ``real_calibrated`` | ``both_calibrated`` (module doc); the
        real score is ``item.extra["real_score"]``, its class's floor ``item.extra["real_floor"]``,
        ``real_history`` {label: earlier real scores} joins its population; ``item.extra`` gets
        ``decided_on`` and ``real_threshold``.
    """
    rows = [_row_from_item(item, pos) for pos, item in enumerate(items)]
    out = _decide(rows, method, history, min_count, margin, near_dup, history_embeddings,
                  class_orders, basis=basis, real_history=real_history)
    for item, (accepted, reason, thr, prov), facts in zip(items, out.per_item, out.per_item_real):
        item.accepted, item.reason, item.threshold, item.provisional = accepted, reason, thr, prov
        item.method = out.config["method"]
        if facts:
            item.extra = {**(item.extra or {}), **facts}
    return ScoredBatch(items=list(items), thresholds=out.thresholds, config=out.config)


def refilter(records: Sequence[dict], method, history: dict | None = None, min_count: int = 8,
             margin: float | None = None, near_dup: float | None = None,
             history_embeddings: dict | None = None,
             class_orders: dict | None = None, kept_rejections: Sequence[str | None] | None = None,
             basis: str = "text", real_history: dict | None = None) -> RefilterResult:
    """Re-apply ``decide``'s rules to stored records without re-encoding anything.

    A record is a dict with ``label`` and ``score`` and optionally ``class_scores``
    ({label: cosine}, also read from ``extra["class_scores"]`` as the writer stores it), ``embedding`` (list or array), ``order`` (or ``metadata["order"]``).
    Returns copies of the records with ``accepted``, ``reason``, ``threshold``, ``method`` and
    ``provisional`` set, plus the per-class thresholds.
    ``kept_rejections``: per record, a reason that keeps it rejected whatever the threshold says
    (a check that is not re-run), or None; such records never count as near-duplicate originals.
    ``basis``: as in ``decide``; the real score is ``real_score`` (or ``extra["real_score"]``), and
    ``decided_on`` / ``real_threshold`` go into the copy's ``extra``.
    """
    rows = [_row_from_record(rec, pos) for pos, rec in enumerate(records)]
    out = _decide(rows, method, history, min_count, margin, near_dup, history_embeddings,
                  class_orders, kept_rejections, basis=basis, real_history=real_history)
    name = out.config["method"]
    updated = [dict(rec, accepted=a, reason=r, threshold=t, provisional=p, method=name,
                    **({"extra": {**(rec.get("extra") or {}), **facts}} if facts else {}))
               for rec, (a, r, t, p), facts in zip(records, out.per_item, out.per_item_real)]
    return RefilterResult(records=updated, thresholds=out.thresholds, config=out.config)


@dataclass
class _Row:
    where: str
    label: str
    score: float
    class_scores: dict | None
    order: Any
    embedding: Any
    real_score: Any = None
    real_floor: Any = None


@dataclass
class _Outcome:
    per_item: list[tuple[bool, str, float, bool]]
    thresholds: dict[str, float]
    config: dict[str, Any]
    per_item_real: list[dict] = field(default_factory=list)   # decided_on, real_threshold (basis != text)


def _row_from_item(item: ScoredItem, pos: int) -> _Row:
    where = f"item {pos}" + (f" (sampler index {item.index})" if item.index is not None else "")
    return _Row(where, item.label, item.score, (item.extra or {}).get("class_scores"),
                (item.metadata or {}).get("order"), item.embedding, (item.extra or {}).get("real_score"),
                (item.extra or {}).get("real_floor"))


def _row_from_record(rec: dict, pos: int) -> _Row:
    if not isinstance(rec, dict):
        raise ClipFilterError(f"record is a {type(rec).__name__}, expected a dict", f"record {pos}")
    order = rec.get("order", (rec.get("metadata") or {}).get("order"))
    # the dataset writer stores the filter's per-class scores under "extra"
    class_scores = rec.get("class_scores") or (rec.get("extra") or {}).get("class_scores")
    where = f"record {pos}" + (f" (id {rec['id']}, {rec.get('file')})" if rec.get("id") else "")
    real = rec.get("real_score", (rec.get("extra") or {}).get("real_score"))
    floor = rec.get("real_floor", (rec.get("extra") or {}).get("real_floor"))
    return _Row(where, rec.get("label"), rec.get("score"), class_scores, order, rec.get("embedding"), real, floor)


def _decide(rows: list[_Row], method, history, min_count, margin, near_dup, history_embeddings,
            class_orders, kept_rejections=None, basis: str = "text", real_history=None) -> _Outcome:
    if not rows:
        raise ClipFilterError("nothing to decide (empty list)", "items")
    check_basis(basis)
    method = method if isinstance(method, ThresholdMethod) else get_method(method)
    _check_option("min_count", min_count, lo=0)
    if margin is not None:
        _check_option("margin", margin, lo=-2.0, hi=2.0)
    if near_dup is not None:
        _check_option("near_dup", near_dup, lo=-1.0, hi=1.0)
    scores = np.array([_check_row(r) for r in rows], dtype=np.float64)
    labels = [r.label for r in rows]

    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    thresholds, provisional, population, notes = {}, {}, {}, {}
    for label, idx in by_label.items():
        earlier = _history_scores(history, label)
        pop = np.concatenate([earlier, scores[idx]])
        thresholds[label], note = method.threshold_with_note(pop)
        population[label] = int(pop.size)
        provisional[label] = pop.size < min_count
        if note:
            notes[label] = note

    thr_per_row = np.array([thresholds[label] for label in labels])
    accepted = scores >= thr_per_row
    reasons = np.where(accepted, "ok", "below_threshold").astype(object)
    per_item_real, real_config = _real_decisions(rows, by_label, method, min_count, basis, real_history,
                                                 accepted, reasons)
    for i, kept in enumerate(kept_rejections or ()):
        if kept and accepted[i]:
            accepted[i], reasons[i] = False, kept
    if margin is not None:
        orders = _class_orders(rows, class_orders)
        for i in np.flatnonzero(accepted):
            if _fails_margin(rows[i], float(margin), orders):
                accepted[i], reasons[i] = False, "class_margin"
    if near_dup is not None:
        _near_duplicates(rows, by_label, accepted, reasons, float(near_dup), history_embeddings)

    per_item = [(bool(accepted[i]), str(reasons[i]), float(thr_per_row[i]),
                 provisional[labels[i]] or bool(per_item_real[i].pop("_real_provisional", False)))
                for i in range(len(rows))]
    config = {"method": method.name, "params": dict(method.params), "min_count": int(min_count),
              "margin": margin, "near_dup": near_dup, "population": population,
              "provisional_labels": sorted(k for k, v in provisional.items() if v),
              "notes": notes, **real_config}
    return _Outcome(per_item, {k: float(v) for k, v in thresholds.items()}, config, per_item_real)


def _real_decisions(rows, by_label, method, min_count, basis, real_history, accepted,
                    reasons) -> tuple[list[dict], dict]:
    """Apply the real-anchored threshold (``basis`` real / both) in place of, or beside, the text
    threshold. Returns per row {decided_on, real_threshold} ({} with basis text) and config facts."""
    if basis == "text":
        return [{} for _ in rows], {}
    text_ok = accepted.copy()
    facts: list[dict] = [{"decided_on": "text"} for _ in rows]
    real_thresholds, skipped, uncalibrated = {}, {}, {}
    for label, idx in by_label.items():
        have = [i for i in idx if rows[i].real_score is not None]
        if not have:
            skipped[label] = f"no real-anchored score for class {label!r} (no real photos of it)"
            continue
        real = np.array([_check_real(rows[i]) for i in have], dtype=np.float64)
        floors = [_check_real(rows[i], "real_floor") if rows[i].real_floor is not None else None for i in have]
        calibrated = basis in CALIBRATED and all(f is not None for f in floors)
        if calibrated:   # the real photos' own floor: nothing from this run's or earlier images
            thr_rows, small, decided = np.array(floors, dtype=np.float64), False, basis
            real_thresholds[label] = float(thr_rows.min())
        else:
            if basis in CALIBRATED:
                uncalibrated[label] = (f"class {label!r}: no calibrated floor (fewer than {MIN_CALIBRATION_PHOTOS} "
                                       "real photos); real threshold from the method over the generated images")
            pop = np.concatenate([_history_scores(real_history, label), real])
            thr, _ = method.threshold_with_note(pop)
            thr_rows, small = np.full(len(have), float(thr)), pop.size < min_count
            decided = "both" if basis in ("both", "both_calibrated") else "real"
            real_thresholds[label] = float(thr)
        for i, value, thr in zip(have, real, thr_rows):
            real_ok = value >= thr
            if decided in ("real", "real_calibrated"):
                accepted[i] = real_ok
                reasons[i] = "ok" if real_ok else "below_real_threshold"
            else:   # both: the text check's reason first
                accepted[i] = text_ok[i] and real_ok
                reasons[i] = "ok" if accepted[i] else ("below_threshold" if not text_ok[i] else "below_real_threshold")
            facts[i] = {"decided_on": decided, "real_threshold": float(thr), "_real_provisional": small}
    config = {"decide_on": basis, "real_thresholds": real_thresholds, "real_skipped": skipped}
    if basis in CALIBRATED:
        config["real_calibration_skipped"] = uncalibrated
    return facts, config


def _check_real(row: _Row, name: str = "real_score") -> float:
    raw = getattr(row, name)
    try:
        value = float(raw)
    except (TypeError, ValueError) as exc:
        raise ClipFilterError(f"{name} {raw!r} is not a number", row.where) from exc
    if not np.isfinite(value):
        raise ClipFilterError(f"{name} is {value}", row.where)
    return value


def _check_option(name, value, lo=None, hi=None):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) \
            or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ClipFilterError(f"{name}={value!r} must be a number in [{lo}, {hi}]", name)


def _check_row(row: _Row) -> float:
    if not isinstance(row.label, str) or not row.label.strip():
        raise ClipFilterError(f"label is missing or empty ({row.label!r})", row.where)
    if row.score is None:
        raise ClipFilterError("has no score; score it before deciding", row.where)
    try:
        value = float(row.score)
    except (TypeError, ValueError) as exc:
        raise ClipFilterError(f"score {row.score!r} is not a number", row.where) from exc
    if not np.isfinite(value):
        raise ClipFilterError(f"score is {value}", row.where)
    return value


def _history_scores(history, label) -> np.ndarray:
    if not history or label not in history or history[label] is None:
        return np.empty(0)
    earlier = np.asarray(history[label], dtype=np.float64).ravel()
    if not np.isfinite(earlier).all():
        raise ClipFilterError("history scores contain NaN or Inf", f"history[{label!r}]")
    return earlier


def _class_orders(rows: list[_Row], explicit: dict | None) -> dict[str, float]:
    orders: dict[str, float] = {}
    for row in rows:
        if row.order is None or row.label in orders:
            continue
        try:
            orders[row.label] = float(row.order)
        except (TypeError, ValueError) as exc:
            raise ClipFilterError(f"class order {row.order!r} is not a number", row.where) from exc
    orders.update({k: float(v) for k, v in (explicit or {}).items()})
    return orders


def _fails_margin(row: _Row, margin: float, orders: dict[str, float]) -> bool:
    cs = row.class_scores
    if not cs or row.label not in cs:
        raise ClipFilterError(f"margin check needs class_scores including own label "
                              f"{row.label!r} (score with class_texts)", row.where)
    own = float(cs[row.label])
    own_order = orders.get(row.label)
    for other, value in cs.items():
        if other == row.label:
            continue
        other_order = orders.get(other)
        if own_order is not None and other_order is not None and abs(own_order - other_order) < 2:
            continue  # neighbouring grade of an ordered class: expected to look alike
        if own - float(value) < margin:
            return True
    return False


def _near_duplicates(rows, by_label, accepted, reasons, threshold, history_embeddings) -> None:
    for label, idx in by_label.items():
        earlier = (history_embeddings or {}).get(label)
        bank = _Bank()
        if earlier is not None and len(earlier):
            bank.add(unit_rows(np.asarray(earlier, dtype=np.float32).reshape(len(earlier), -1)),
                     f"history_embeddings[{label!r}]")
        for i in idx:
            if not accepted[i]:
                continue   # only accepted items count as originals
            if rows[i].embedding is None:
                raise ClipFilterError("near-duplicate check needs an image embedding", rows[i].where)
            emb = unit_rows(np.asarray(rows[i].embedding, dtype=np.float32).reshape(1, -1))
            if bank.max_cosine(emb[0], rows[i].where) >= threshold:
                accepted[i], reasons[i] = False, "near_duplicate"
            else:
                bank.add(emb, rows[i].where)


class _Bank:
    """Growing matrix of unit embeddings (amortised O(1) append)."""

    def __init__(self):
        self.data, self.n = None, 0

    def add(self, m: np.ndarray, where: str) -> None:
        if self.data is None:
            self.data = np.empty((max(64, 2 * len(m)), m.shape[1]), np.float32)
        self._check_dim(m.shape[1], where)
        if self.n + len(m) > len(self.data):
            grown = np.empty((2 * (self.n + len(m)), self.data.shape[1]), np.float32)
            grown[:self.n] = self.data[:self.n]
            self.data = grown
        self.data[self.n:self.n + len(m)] = m
        self.n += len(m)

    def max_cosine(self, v: np.ndarray, where: str) -> float:
        if self.n == 0:
            return -np.inf
        self._check_dim(v.shape[0], where)
        return float((self.data[:self.n] @ v).max())

    def _check_dim(self, dim: int, where: str) -> None:
        if dim != self.data.shape[1]:
            raise ClipFilterError(f"embedding size {dim} differs from earlier {self.data.shape[1]}",
                                  where)
