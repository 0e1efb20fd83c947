"""Choosing on some photos, reporting on others: the threshold sweep's honesty (issue #27, item 6).

A sweep that names its best setting by its accuracy on the photos it then reports is optimistic
(the maximum of several noisy numbers). So the sweep splits the real test photos, per class and
seeded, into a *validation* part (the setting is chosen there) and a *held-out* part (the chosen
setting and "as stored" are reported there, on photos the choice never saw), and gives a paired
bootstrap interval of the held-out accuracy difference. The dataset is re-decided only when that
difference is larger than its uncertainty (the interval's lower bound above 0).

Plain functions on arrays:

- ``stratified_split(labels, fraction, seed)``: (validation indices, held-out indices); per class
  ``floor(n * fraction)`` photos to validation, at least 1 and at most ``n - 1``, chosen by one
  seeded permutation per class (classes in increasing label order); a class with fewer than 2
  photos is refused (``split_problem`` says which).
- ``paired_bootstrap(correct_a, correct_b, n_boot, seed, level)``: the accuracy difference
  ``mean(a) - mean(b)`` over the same photos and its percentile interval over ``n_boot`` resamples
  of the photos (with replacement, the same resample for both, so the pairing is kept).
- ``apply_decision(best_is_stored, interval)``: whether ``apply_best`` may act, and why (not).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_PER_CLASS = 2          # one photo to choose on, one to report on


def _labels(labels) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"labels must be a 1-D array of integer class ids, got {y.dtype} of shape {y.shape}")
    return y.astype(np.int64)


def check_fraction(fraction) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"validation fraction must be a number between 0 and 1 (exclusive), got {fraction!r}")
    return float(fraction)


def split_problem(labels, names=None) -> str | None:
    """None when every class has ``MIN_PER_CLASS`` photos, else which classes have fewer."""
    y = _labels(labels)
    values, counts = np.unique(y, return_counts=True)
    short = [(int(v), int(n)) for v, n in zip(values, counts) if n < MIN_PER_CLASS]
    if not short:
        return None
    shown = ", ".join(f"{names[v]!r} ({n})" if names is not None else f"{v} ({n})" for v, n in short)
    return (f"the sweep chooses its setting on part of the test photos and reports it on the rest, so it needs at "
            f"least {MIN_PER_CLASS} test photos per class; too few: {shown}")


def stratified_split(labels, fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(validation, held_out): sorted int64 index arrays into ``labels``, disjoint, covering all."""
    y = _labels(labels)
    fraction = check_fraction(fraction)
    problem = split_problem(y)
    if problem:
        raise ValueError(problem)
    rng = np.random.default_rng(seed)
    val, held = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n_val = min(max(int(np.floor(len(idx) * fraction)), 1), len(idx) - 1)
        order = idx[rng.permutation(len(idx))]
        val.append(order[:n_val])
        held.append(order[n_val:])
    return np.sort(np.concatenate(val)), np.sort(np.concatenate(held))


@dataclass(frozen=True)
class Interval:
    difference: float          # mean(a) - mean(b)
    low: float
    high: float
    level: float               # e.g. 0.95
    n: int                     # photos
    n_boot: int
    seed: int

    def as_dict(self) -> dict:
        return {"difference": self.difference, "low": self.low, "high": self.high, "level": self.level,
                "n": self.n, "n_boot": self.n_boot, "seed": self.seed}

    def text(self) -> str:
        """e.g. '+1.7 points (95 % bootstrap interval -3.3 .. +6.7, 2000 resamples of 60 photos)'."""
        return (f"{100 * self.difference:+.1f} points ({100 * self.level:g} % bootstrap interval "
                f"{100 * self.low:+.1f} .. {100 * self.high:+.1f}, {self.n_boot} resamples of {self.n} photos)")


def paired_bootstrap(correct_a, correct_b, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Accuracy of ``a`` minus accuracy of ``b`` on the same photos (``correct_*``: one bool or 0/1
    per photo), with the ``level`` percentile interval of that difference over ``n_boot`` paired
    resamples of the photos (``numpy.quantile``, linear interpolation)."""
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"correct_a and correct_b must be non-empty 1-D arrays of one length, got shapes "
                         f"{a.shape} and {b.shape}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or not 100 <= n_boot <= 100_000:
        raise ValueError(f"n_boot must be an integer in 100..100000, got {n_boot!r}")
    if not 0.5 <= float(level) < 1.0:
        raise ValueError(f"level must be in [0.5, 1), got {level!r}")
    d = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, 2_000_000 // d.size)           # bounded memory: at most ~2 M indices at a time
    for start in range(0, n_boot, step):
        rows = min(step, n_boot - start)
        means[start:start + rows] = d[rng.integers(0, d.size, size=(rows, d.size))].mean(axis=1)
    tail = (1.0 - float(level)) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(d.mean()), float(low), float(high), float(level), int(d.size), n_boot, int(seed))


def apply_decision(best_is_stored: bool, interval: Interval | None) -> tuple[bool, str]:
    """(act, why): re-decide the dataset only when the setting chosen on the validation photos
    beats "as stored" on the held-out photos by more than the uncertainty (interval low > 0)."""
    if best_is_stored:
        return False, "the best setting on the validation photos is the stored decisions: nothing to change"
    if interval is None:
        return False, "no held-out comparison with the stored decisions (nothing accepted as stored)"
    if interval.low > 0:
        return True, f"on the held-out photos the best setting beats as stored by {interval.text()}: above 0"
    return False, (f"on the held-out photos the best setting differs from as stored by {interval.text()}: "
                   "the interval reaches 0 or below, so the difference is within the uncertainty")
