"""The real-anchored score: how much an image's CLIP embedding looks like the real photos of its
class (plain numpy; the node and Finalize only pass embeddings in).

``real_score`` = mean of the top-k cosines between the image and its class's real embeddings,
k = ``effective_k(top_k, n)``: at most n - 1 of the class's n photos, so that an image and a photo
scored leave-one-out (below) average the same number of cosines; ``real_margin`` = real_score minus
the best real_score the image reaches against another class's real photos (None with one class). A
class with no real photo gets no real score: it is decided on its text score and ``real_skipped``
says why. A class with one real photo is scored (``real_weak``: one photo is a thin anchor).

Real embeddings must come from the same CLIP as the images' embeddings: ``RealBank.model`` and the
images' model are compared by ``clip_identity`` (architecture, weights file, weights sha256) and a
mismatch is refused naming both.

``real_floor`` calibrates the real-anchored threshold on the real photos themselves rather than on
the generated images' scores: each real photo of a class is scored leave-one-out against the other
photos of its class (the same top-k mean), which shows how low an in-domain image of that class can
score. The floor is ``median - (1 + slack) * width`` of those scores, where width is the class's
spread (``median - min``), but never less than the mean spread of the classes that have photos
enough: a class whose few photos happen to be near-alike would otherwise get a floor so high that it
rejects good images (seen on the bench: 17 good of 27 images rejected in one repeat). With one class,
or when every class's photos are near-alike, the typical spread is no wider and nothing changes. It needs
``MIN_CALIBRATION_PHOTOS`` photos of the class; with fewer, ``real_floor`` is None.

The defaults (k = 8, slack 1) were chosen on bench/bench_real_anchored.py's development seeds 0-3
(20 repeats, 10 photos per class) by the bench's ``--select`` rule: the setting that rejects the
most planted off-domain images among those whose own precision and that of their neighbours
(k +- 1, slack one grid step) is >= 0.9 on the images the text check keeps (re-run with the filter's
own photo bank it picks k = 9, at the grid's edge, by 0.4 images per repeat). The README reports them
on held-out seeds, and how this rule came to be (the first one failed on held-out seeds).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..common.vectors import unit_rows
from ..scoring.errors import ClipFilterError

DEFAULT_TOP_K = 8
# what an image is decided on; the *_calibrated ones use the real photos' own floor (``real_floor``)
BASES = ("text", "real", "both", "real_calibrated", "both_calibrated")
CALIBRATED = ("real_calibrated", "both_calibrated")
DEFAULT_FLOOR_SLACK = 1.0
MIN_CALIBRATION_PHOTOS = 3
# what ``real_scores`` writes into an image's ``extra`` (a re-decision replaces all of them)
REAL_FACTS = ("real_score", "real_margin", "real_n", "real_k", "real_weak", "real_floor", "real_skipped")


def clip_identity(describe: dict | None) -> str | None:
    """A short name of the CLIP that made embeddings, from ``ClipBundle.describe()``."""
    if not describe:
        return None
    sha = describe.get("sha256") or ""
    return f"{describe.get('arch')} ({describe.get('weights')}, sha256 {sha[:12] or '?'})"


@dataclass
class RealBank:
    """The real photos' embeddings per class, and which CLIP made them."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)   # label -> [n, D] unit rows
    model: str | None = None
    sources: list[str] = field(default_factory=list)               # where they came from, for the node's text
    encoded: dict = field(default_factory=dict)                    # file sha256 -> vector encoded in this run
    keys: set = field(default_factory=set, repr=False)             # rows already added (one photo counts once)

    @classmethod
    def build(cls, rows, model: str | None, source: str) -> RealBank:
        """From ``(label, key, vector)`` rows; the same key twice counts once."""
        bank = cls(model=model)
        bank.add(rows, model, source)
        return bank

    def add(self, rows, model: str | None, source: str) -> None:
        """Add ``(label, key, vector)`` rows made by ``model`` (refused when it is not the bank's)."""
        rows = list(rows)
        if not rows:
            return
        if self.model is not None and model is not None and model != self.model:
            raise ClipFilterError(f"real embeddings from {source} were made by {model}, earlier ones by "
                                  f"{self.model}: one CLIP for all real photos", "real_images")
        self.model = self.model or model
        seen = self.keys
        grouped: dict[str, list] = {}
        for label, key, vec in rows:
            if key in seen:
                continue
            seen.add(key)
            grouped.setdefault(label, []).append(np.asarray(vec, dtype=np.float32).reshape(-1))
        for label, vecs in grouped.items():
            new = unit_rows(np.stack(vecs))
            old = self.vectors.get(label)
            if old is not None and old.shape[1] != new.shape[1]:
                raise ClipFilterError(f"real embeddings of class {label!r} have {new.shape[1]} and {old.shape[1]} "
                                      "dimensions: made by two CLIP models", source)
            self.vectors[label] = new if old is None else np.concatenate([old, new])
        self.sources.append(f"{sum(len(v) for v in grouped.values())} from {source}")

    def counts(self) -> dict[str, int]:
        return {label: int(len(v)) for label, v in sorted(self.vectors.items())}

    def __bool__(self) -> bool:
        return any(len(v) for v in self.vectors.values())


def check_same_model(bank: RealBank, image_model: str | None, image_dim: int | None = None) -> None:
    """Refuse real embeddings from another CLIP than the images' (both named)."""
    if bank.model is not None and image_model is not None and bank.model != image_model:
        raise ClipFilterError(f"the real photos' embeddings were made by {bank.model}, the images' by {image_model}; "
                              "a real-anchored score compares embeddings of one CLIP only (re-run the filter with "
                              "that CLIP, or import the real photos again through it)", "real_images")
    dims = {v.shape[1] for v in bank.vectors.values() if len(v)}
    if image_dim is not None and dims and dims != {image_dim}:
        raise ClipFilterError(f"the real photos' embeddings have {sorted(dims)} dimensions, the images' {image_dim} "
                              f"(real: {bank.model or 'model not recorded'}, images: {image_model or 'model not recorded'}): "
                              "made by two different CLIP models", "real_images")


def top_k_mean(cosines: np.ndarray, k: int) -> np.ndarray:
    """Row-wise mean of the ``k`` largest values of ``cosines`` [n, m] (k clipped to m)."""
    k = max(1, min(int(k), cosines.shape[1]))
    part = np.partition(cosines, cosines.shape[1] - k, axis=1)[:, cosines.shape[1] - k:]
    return part.mean(axis=1)


def effective_k(top_k: int, n: int) -> int:
    """How many of a class's ``n`` photos a real-anchored score averages: ``top_k``, at most
    n - 1 (what a photo scored leave-one-out can have), at least 1."""
    return max(1, min(int(top_k), int(n) - 1))


def leave_one_out_scores(vectors: np.ndarray, top_k: int = DEFAULT_TOP_K) -> np.ndarray:
    """Each real photo's real-anchored score against the other photos of its class: the mean of its
    top-k cosines to them (k = ``effective_k``). ``vectors`` [n, D]; empty when n < 2."""
    vecs = unit_rows(np.asarray(vectors, dtype=np.float32))
    if len(vecs) < 2:
        return np.empty(0)
    cos = (vecs @ vecs.T).astype(np.float64)
    np.fill_diagonal(cos, -np.inf)     # never its own cosine; k <= n - 1 so -inf is never picked
    return top_k_mean(cos, effective_k(top_k, len(vecs)))


def spread(loo) -> float | None:
    """How far a class's photos reach below their middle: ``median - min`` of their leave-one-out
    scores; None with fewer than ``MIN_CALIBRATION_PHOTOS``."""
    loo = np.asarray(loo, dtype=np.float64).ravel()
    return float(np.median(loo) - loo.min()) if loo.size >= MIN_CALIBRATION_PHOTOS else None


def real_floor(loo, slack: float = DEFAULT_FLOOR_SLACK, typical_spread: float | None = None) -> float | None:
    """``median - (1 + slack) * max(spread, typical_spread)`` of the leave-one-out scores (without
    ``typical_spread``: ``min - slack * (median - min)``); None with fewer than
    ``MIN_CALIBRATION_PHOTOS`` of them."""
    own = spread(loo)
    if own is None:
        return None
    width = max(own, typical_spread) if typical_spread is not None else own
    return float(np.median(np.asarray(loo, dtype=np.float64))) - (1.0 + float(slack)) * width


def class_floors(bank: RealBank, top_k: int = DEFAULT_TOP_K, slack: float = DEFAULT_FLOOR_SLACK) -> dict:
    """Each class's ``real_floor`` (None with too few photos); the typical spread is the mean of
    the spreads of the classes that have one (module doc)."""
    loo = {label: leave_one_out_scores(vecs, top_k) for label, vecs in bank.vectors.items() if len(vecs)}
    spreads = [w for w in map(spread, loo.values()) if w is not None and np.isfinite(w)]
    typical = float(np.mean(spreads)) if spreads else None
    return {label: real_floor(scores, slack, typical) for label, scores in loo.items()}


def check_slack(slack) -> float:
    if isinstance(slack, bool) or not isinstance(slack, (int, float, np.floating)) or not np.isfinite(slack) \
            or not 0.0 <= slack <= 10.0:
        raise ClipFilterError(f"real_floor_slack={slack!r} must be a number in [0, 10]", "real_floor_slack")
    return float(slack)


def real_scores(embeddings, labels, bank: RealBank, top_k: int = DEFAULT_TOP_K,
                floor_slack: float = DEFAULT_FLOOR_SLACK) -> list[dict]:
    """Per image: ``{"real_score", "real_margin", "real_n", "real_k", "real_weak", "real_floor"}``
    (``real_floor``: its class's floor, module doc; None with fewer than 3 photos), or
    ``{"real_skipped": why}`` when its class has no real photo."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ClipFilterError(f"real_top_k={top_k!r} must be an integer >= 1", "real_top_k")
    slack = check_slack(floor_slack)
    emb = unit_rows(np.asarray(embeddings, dtype=np.float32).reshape(len(labels), -1)) if len(labels) else None
    per_class = {}
    for label, vecs in bank.vectors.items():
        if len(vecs):
            per_class[label] = top_k_mean(emb @ vecs.T, effective_k(top_k, len(vecs))) if emb is not None else None
    floors = class_floors(bank, top_k, slack) if per_class else {}
    out = []
    for i, label in enumerate(labels):
        if label not in per_class:
            out.append({"real_skipped": f"no real photos of class {label!r}"})
            continue
        own = float(per_class[label][i])
        others = [float(v[i]) for other, v in per_class.items() if other != label]
        n = int(len(bank.vectors[label]))
        out.append({"real_score": own, "real_margin": own - max(others) if others else None, "real_n": n,
                    "real_k": effective_k(top_k, n), "real_weak": n == 1, "real_floor": floors[label]})
    return out


def check_basis(basis: str) -> str:
    if basis not in BASES:
        raise ClipFilterError(f"decide_on={basis!r}: choose one of {', '.join(BASES)}", "decide_on")
    return basis


def bank_summary(bank: RealBank | None, labels, why_none: str | None = None) -> list[str]:
    """The node's lines about the real-anchored check: skipped (and why), else per class how many
    real photos anchor it, weak ones flagged, classes without any named."""
    if bank is None or not bank:
        return [f"real-anchored check skipped: {why_none or 'no real photos'}"]
    counts = bank.counts()
    lines = [f"real-anchored: {sum(counts.values())} real photos ({'; '.join(bank.sources)}), CLIP {bank.model or '?'}"]
    for label in sorted(set(labels)):
        n = counts.get(label, 0)
        if n == 0:
            lines.append(f"{label}: no real photos, decided on the text score only")
        elif n == 1:
            lines.append(f"{label}: 1 real photo (weak anchor)")
        elif n < MIN_CALIBRATION_PHOTOS:
            lines.append(f"{label}: {n} real photos, too few for a calibrated floor ({MIN_CALIBRATION_PHOTOS} needed)")
    return lines
