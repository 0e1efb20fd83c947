"""Per-class threshold methods, one small strategy class each (cleanvision style).

Every method turns one class's scores into one threshold; an item is accepted when
``score >= threshold``. Same interface for all: ``name``, ``defaults``, ``params``,
``with_params(**kw)``, ``threshold(scores)`` and ``threshold_with_note(scores)`` (the note says
when a method fell back to a simpler rule). Add a method = add a class to ``METHODS``.
"""
from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from ..scoring.errors import ClipFilterError

# Parameter ranges, shared by the validators below and the node widgets (WIDGET_RANGES).
K_RANGE = (0.0, 10.0)            # k of mean_std / median_mad and gmm's fallback_k, inclusive
P_RANGE = (0.0, 100.0)           # percentile p: 0 < p <= 100
FIXED_RANGE = (-1.0, 1.0)        # fixed threshold: a cosine similarity, inclusive


class ThresholdMethod:
    name: ClassVar[str] = ""
    defaults: ClassVar[dict] = {}

    def __init__(self, **params):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ClipFilterError(f"unknown parameter(s) {unknown} for method {self.name!r}; "
                                  f"accepted: {sorted(self.defaults)}", "method params")
        merged = {**self.defaults, **params}
        for key, value in merged.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ClipFilterError(f"parameter {key}={value!r} must be a finite number",
                                      f"{self.name} params")
        self.params = {k: float(v) for k, v in merged.items()}
        self._validate()

    def _validate(self) -> None:
        """Range checks for parameters; raise ClipFilterError."""
        if "k" in self.params:
            _check_k("k", self.params["k"], self.name)

    def with_params(self, **kw) -> ThresholdMethod:
        """A copy with some parameters changed."""
        return type(self)(**{**self.params, **kw})

    def threshold(self, scores) -> float:
        return self.threshold_with_note(scores)[0]

    def threshold_with_note(self, scores) -> tuple[float, str | None]:
        arr = np.asarray(scores, dtype=np.float64).ravel()
        if arr.size == 0:
            raise ClipFilterError("no scores to compute a threshold from", self.name)
        if not np.isfinite(arr).all():
            raise ClipFilterError("scores contain NaN or Inf", self.name)
        return self._compute(arr)

    def _compute(self, scores: np.ndarray) -> tuple[float, str | None]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{self.name}({args})"


class MeanStd(ThresholdMethod):
    """mean - k * std, population std (ddof=0) like DTGen's ``numpy.std``; k=1.5 as in DTGen."""

    name = "mean_std"
    defaults: ClassVar[dict] = {"k": 1.5}

    def _compute(self, s):
        return float(s.mean() - self.params["k"] * s.std(ddof=0)), None


class MedianMad(ThresholdMethod):
    """median - k * 1.4826 * MAD (robust to the outliers being removed).

    1.4826 * MAD estimates the standard deviation of normal data; k=2.5 is the "moderately
    conservative" cut recommended by Leys et al. (2013). If MAD is 0 (over half the scores tie)
    the scaled mean absolute deviation around the median (1.2533 * mean|x - median|) stands in.
    """

    name = "median_mad"
    defaults: ClassVar[dict] = {"k": 2.5}

    def _compute(self, s):
        med = float(np.median(s))
        spread = 1.4826 * float(np.median(np.abs(s - med)))
        note = None
        if spread == 0.0:
            spread = 1.2533 * float(np.mean(np.abs(s - med)))
            note = "median_mad: MAD is 0, used 1.2533 * mean absolute deviation"
        return med - self.params["k"] * spread, note


class Percentile(ThresholdMethod):
    """Keep the top ``p`` % of each class: threshold = the (100 - p) percentile (linear interp.)."""

    name = "percentile"
    defaults: ClassVar[dict] = {"p": 90.0}

    def _validate(self):
        lo, hi = P_RANGE
        if not lo < self.params["p"] <= hi:
            raise ClipFilterError(f"p={self.params['p']:g} must be in ({lo:g}, {hi:g}]", "percentile params")

    def _compute(self, s):
        return float(np.percentile(s, 100.0 - self.params["p"])), None


class Fixed(ThresholdMethod):
    """A fixed cosine threshold (model dependent: ~0.2-0.3 is typical for OpenAI ViT-B-32)."""

    name = "fixed"
    defaults: ClassVar[dict] = {"value": 0.25}

    def _validate(self):
        lo, hi = FIXED_RANGE
        if not lo <= self.params["value"] <= hi:
            raise ClipFilterError(f"value={self.params['value']:g} must be in [{lo:g}, {hi:g}] "
                                  "(a cosine similarity)", "fixed params")

    def _compute(self, s):
        return self.params["value"], None


class Gmm(ThresholdMethod):
    """Two-component 1-D Gaussian mixture fitted by EM; keep the high-mean component.

    Threshold = the score between the two means where the high component's posterior is 0.5.
    Deterministic init: means at the 25th / 75th percentiles, both variances = the sample
    variance, equal weights. Falls back to ``mean_std`` (k = ``fallback_k``) and says why in the
    note when: fewer than ``min_points`` scores, (almost) no spread, a collapsed component, or
    the fit is not clearly bimodal (Ashman's D < ``min_separation``: one population, nothing to
    split off).
    """

    name = "gmm"
    defaults: ClassVar[dict] = {"min_points": 4, "min_separation": 2.0, "fallback_k": 1.5, "max_iter": 200}

    def _validate(self):
        if self.params["min_points"] < 4 or self.params["max_iter"] < 1:
            raise ClipFilterError(f"min_points={self.params['min_points']:g} must be >= 4 and "
                                  f"max_iter={self.params['max_iter']:g} >= 1", "gmm params")
        _check_k("fallback_k", self.params["fallback_k"], self.name)

    def _compute(self, s):
        why = self._degenerate(s)
        fit = None if why else _fit_gmm2(s, int(self.params["max_iter"]))
        if fit is not None and why is None:
            (w_lo, m_lo, v_lo), (w_hi, m_hi, v_hi) = fit
            floor = 1e-6 * float(s.var())
            if min(v_lo, v_hi) <= floor * 1.0001 or min(w_lo, w_hi) * s.size < 1:
                why = "a mixture component collapsed"
            else:
                d = math.sqrt(2.0) * (m_hi - m_lo) / math.sqrt(v_lo + v_hi)
                if d < self.params["min_separation"]:
                    why = f"scores are not bimodal (Ashman's D = {d:.2f})"
                else:
                    cut = _boundary(fit)
                    if cut is not None:
                        return cut, None
                    why = "no decision boundary between the component means"
        k = self.params["fallback_k"]
        return float(s.mean() - k * s.std(ddof=0)), f"gmm fell back to mean_std (k={k:g}): {why}"

    def _degenerate(self, s) -> str | None:
        if s.size < self.params["min_points"]:
            return f"only {s.size} score(s), need {int(self.params['min_points'])}"
        if float(s.std()) <= 1e-9:
            return "all scores (nearly) identical"
        return None


def _check_k(key: str, value: float, method: str) -> None:
    lo, hi = K_RANGE
    if not lo <= value <= hi:
        raise ClipFilterError(f"{key}={value:g} must be >= {lo:g} and <= {hi:g}", f"{method} params")


def _fit_gmm2(s: np.ndarray, max_iter: int):
    """EM for two 1-D Gaussians; returns ((w, mean, var) low, (w, mean, var) high)."""
    var0 = float(s.var())
    floor = 1e-6 * var0
    mu = np.array([np.percentile(s, 25), np.percentile(s, 75)], dtype=np.float64)
    var = np.array([var0, var0])
    w = np.array([0.5, 0.5])
    prev = -np.inf
    x = s[:, None]
    for _ in range(max_iter):
        log_p = np.log(w) - 0.5 * np.log(2 * np.pi * var) - 0.5 * (x - mu) ** 2 / var
        top = log_p.max(axis=1, keepdims=True)
        log_norm = top + np.log(np.exp(log_p - top).sum(axis=1, keepdims=True))
        resp = np.exp(log_p - log_norm)
        nk = resp.sum(axis=0) + 1e-12
        w = nk / s.size
        mu = (resp * x).sum(axis=0) / nk
        var = np.maximum((resp * (x - mu) ** 2).sum(axis=0) / nk, floor)
        ll = float(log_norm.sum())
        if ll - prev < 1e-10 * abs(ll) + 1e-12:
            break
        prev = ll
    lo, hi = (0, 1) if mu[0] <= mu[1] else (1, 0)
    return (w[lo], mu[lo], var[lo]), (w[hi], mu[hi], var[hi])


def _boundary(fit) -> float | None:
    """x in [m_lo, m_hi] where w_lo N(x; m_lo, v_lo) = w_hi N(x; m_hi, v_hi)."""
    (w1, m1, v1), (w2, m2, v2) = fit
    # log w1 - 0.5 log v1 - (x-m1)^2 / 2v1 = log w2 - 0.5 log v2 - (x-m2)^2 / 2v2
    a = 1 / (2 * v2) - 1 / (2 * v1)
    b = m1 / v1 - m2 / v2
    c = m2 ** 2 / (2 * v2) - m1 ** 2 / (2 * v1) + math.log(w1 / w2) - 0.5 * math.log(v1 / v2)
    if abs(a) < 1e-12:
        roots = [-c / b] if b != 0 else []
    else:
        disc = b * b - 4 * a * c
        if disc < 0:
            return None
        r = math.sqrt(disc)
        roots = [(-b - r) / (2 * a), (-b + r) / (2 * a)]
    inside = [x for x in roots if m1 <= x <= m2]
    if not inside:
        return None
    mid = 0.5 * (m1 + m2)
    return float(min(inside, key=lambda x: abs(x - mid)))


METHODS: dict[str, type[ThresholdMethod]] = {
    cls.name: cls for cls in (MeanStd, MedianMad, Percentile, Fixed, Gmm)
}


# The numeric threshold widgets of DTGen CLIP Filter and DTGen Dataset Finalize (built from this
# dict by adapters/comfy_types.threshold_inputs), so a widget offers exactly what method_from
# accepts: k, keep_percent and fixed_threshold are checked by method_from (the nodes'
# validate_inputs name them, so ComfyUI skips its own range check); the frontend rounds a float
# widget to its step's decimals, so keep_percent's smallest value is 0.1, the step, never 0.
# min_count is checked by ComfyUI against this range (validate_inputs does not name it) and by
# decide (>= 0).
WIDGET_RANGES: dict[str, dict] = {
    "k": {"default": 1.5, "min": K_RANGE[0], "max": K_RANGE[1], "step": 0.05},
    "keep_percent": {"default": 90.0, "min": 0.1, "max": P_RANGE[1], "step": 0.1},
    "fixed_threshold": {"default": 0.25, "min": FIXED_RANGE[0], "max": FIXED_RANGE[1], "step": 0.005},
    "min_count": {"default": 8, "min": 1, "max": 100000},
}


def method_from(name: str, k: float = 1.5, keep_percent: float = 90.0, fixed_threshold: float = 0.25):
    """The threshold method for the node widgets / CLI flags (each method reads the one it needs)."""
    params = {"mean_std": {"k": k}, "median_mad": {"k": k}, "percentile": {"p": keep_percent},
              "fixed": {"value": fixed_threshold}, "gmm": {"fallback_k": k}}
    if name not in params:
        return get_method(name)  # raises the clear "unknown method" error
    return get_method(name, **params[name])


def get_method(name, **params) -> ThresholdMethod:
    """Instantiate a method by name, e.g. ``get_method("mean_std", k=2.0)``."""
    if isinstance(name, ThresholdMethod):
        return name.with_params(**params) if params else name
    cls = METHODS.get(name)
    if cls is None:
        raise ClipFilterError(f"unknown threshold method {name!r}; choose one of {sorted(METHODS)}",
                              "method")
    return cls(**params)
