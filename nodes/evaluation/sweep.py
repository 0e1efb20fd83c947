"""The threshold sweep: which filter setting gives the best classifier, chosen on some real
photos and reported on others.

For each setting of a grid (threshold method and k, or "as stored"), the stored scores of the
dataset's synthetic records are re-decided in memory (``curation.redecide.decide_fn_for``, the
code ``python -m runner redecide`` and Finalize use: nothing is moved or written) and a linear
probe is trained on the accepted ones (+ the few-shot images when asked).

The test photos are split per class, seeded (``validation.stratified_split``), into a validation
part and a held-out part. The best setting has the highest macro-F1 on the *validation* photos;
ties go to the higher validation accuracy, then to fewer changed decisions (against the stored
ones), then to the earlier setting in the grid. Every setting's reported numbers
(``SettingResult.metrics``) are on the *held-out* photos, which the choice never saw, and the
held-out accuracy difference best minus "as stored" comes with a paired bootstrap interval
(``validation.paired_bootstrap``); ``apply`` (may ``apply_best`` re-decide the dataset?) is true
only when the interval's lower bound is above 0 (``validation.apply_decision``).

A class-margin or near-duplicate rejection stays rejected (those checks are not re-run), and a
record stored without a score keeps its decision, as in ``redecide``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..curation.redecide import decide_fn_for
from ..curation.thresholds import ThresholdMethod, get_method
from . import metrics as M
from .arms import FewShot, class_of
from .errors import EvaluationError
from .features import FeatureSource
from .probe import LinearProbe
from .validation import Interval, apply_decision, check_fraction, paired_bootstrap, split_problem, stratified_split

AS_STORED = "as stored"


@dataclass(frozen=True)
class Setting:
    name: str
    method: ThresholdMethod | None = None     # None: the decisions as stored

    def as_dict(self) -> dict:
        return {"name": self.name, "method": None if self.method is None else self.method.name,
                "params": None if self.method is None else dict(self.method.params)}


def setting(method: str, **params) -> Setting:
    """e.g. ``setting("mean_std", k=1.5)`` -> "mean_std k=1.5"; percentile's ``p`` shows as keep."""
    m = get_method(method, **params)
    shown = " ".join(f"{'keep' if k == 'p' else k}={v:g}" for k, v in params.items())
    return Setting(f"{m.name} {shown}".strip(), m)


def default_grid() -> list[Setting]:
    return ([Setting(AS_STORED)]
            + [setting("mean_std", k=k) for k in (0.5, 1.0, 1.5, 2.0)]
            + [setting("median_mad", k=k) for k in (2.0, 2.5, 3.0)]
            + [setting("percentile", p=p) for p in (50.0, 70.0, 90.0)])


@dataclass
class SettingResult:
    setting: Setting
    n_train: int
    accepted: dict            # {class: accepted synthetic images}
    changes: int              # decisions that differ from the stored ones
    metrics: M.Metrics | None  # on the held-out photos; None: nothing accepted, not evaluated
    validation: M.Metrics | None = None   # on the validation photos: the choice is made on these
    correct: np.ndarray | None = None     # bool per held-out photo: predicted right

    def as_dict(self) -> dict:
        return {**self.setting.as_dict(), "n_train": self.n_train, "accepted": dict(self.accepted),
                "changes": self.changes, "metrics": None if self.metrics is None else self.metrics.as_dict(),
                "validation_metrics": None if self.validation is None else self.validation.as_dict()}


@dataclass
class SweepResult:
    results: list
    best: SettingResult | None              # chosen on the validation photos
    with_fewshot: bool
    split: dict = field(default_factory=dict)   # fraction, seed, {class: photos} of validation / held_out
    baseline: SettingResult | None = None   # "as stored": its grid row, or fitted for the comparison
    interval: Interval | None = None        # held-out accuracy, best minus as stored
    apply: bool = False                     # may apply_best re-decide the dataset?
    apply_reason: str = ""

    def table(self) -> str:
        header = ("setting", "n train", "changes", "val. macro-F1", "accuracy", "macro-F1", "per-class recall")
        rows = []
        for r in self.results:
            mark = " *" if r is self.best else ""
            if r.metrics is None:
                rows.append((r.setting.name + mark, str(r.n_train), str(r.changes), "-", "-", "-", "nothing accepted"))
            else:
                _, n, acc, f1, rec = M.table_row(r.setting.name, r.n_train, r.metrics)
                rows.append((r.setting.name + mark, n, str(r.changes), f"{r.validation.macro_f1:.3f}", acc, f1, rec))
        return M.format_table(rows, header)

    def split_text(self) -> str:
        """e.g. 'validation 6 photos (blue 2, ...), held-out 6 photos (...) (a stratified split ...)'."""
        def part(name):
            counts = self.split[name]
            return f"{sum(counts.values())} photos ({', '.join(f'{c} {n}' for c, n in counts.items())})"
        return (f"validation {part('validation')}, held-out {part('held_out')} (stratified split of the test "
                f"photos, {100 * self.split['fraction']:g} % to validation, seed {self.split['seed']})")

    def comparison(self) -> dict | None:
        """The held-out comparison of the best setting with as stored (report and ``best``)."""
        if self.best is None:
            return None
        base = self.baseline
        return {"best": self.best.setting.name, "baseline": AS_STORED,
                "accuracy_best": self.best.metrics.accuracy,
                "accuracy_baseline": None if base is None or base.metrics is None else base.metrics.accuracy,
                "interval": None if self.interval is None else self.interval.as_dict(),
                "apply": self.apply, "apply_reason": self.apply_reason}

    def as_dict(self) -> dict:
        return {"with_fewshot": self.with_fewshot, "best": None if self.best is None else self.best.setting.name,
                "chosen_on": "validation", "reported_on": "held_out", "split": dict(self.split),
                "comparison": self.comparison(), "settings": [r.as_dict() for r in self.results]}


def best_of(results: Sequence[SettingResult]) -> SettingResult | None:
    """Highest validation macro-F1, then validation accuracy, then fewest changes, then the first in
    the grid (a result without ``validation``: its ``metrics``); settings that accepted nothing do
    not compete."""
    scored = [r for r in results if r.metrics is not None]
    chosen_on = lambda r: r.validation if r.validation is not None else r.metrics
    key = lambda r: (round(chosen_on(r).macro_f1, 12), round(chosen_on(r).accuracy, 12), -r.changes)
    return max(scored, key=key) if scored else None     # max keeps the first of equal keys


def check_sweep(records, classes, grid, fewshot, with_fewshot, test_y=None, validation_fraction: float = 0.5) -> None:
    """Refuse a sweep that cannot run: an empty grid, no stored score, few-shot asked but none, a
    validation fraction outside (0, 1), a class with fewer than 2 test photos (``test_y``)."""
    if grid is not None and not list(grid):
        raise EvaluationError(None, "sweep: the grid of settings is empty")
    cset = set(classes)
    if not any(r.get("score") is not None and class_of(r, cset) is not None for r in records):
        raise EvaluationError(None, "sweep: the dataset has no scored synthetic image of a test class, so there is "
                              "nothing to re-decide (images stored without the CLIP filter)")
    if with_fewshot and fewshot is None:
        raise EvaluationError(None, "sweep with few-shot images asked, but there are none")
    try:
        check_fraction(validation_fraction)
    except ValueError as e:
        raise EvaluationError(None, f"sweep: {e}") from None
    if test_y is not None:
        problem = split_problem(test_y, list(classes))
        if problem:
            raise EvaluationError(None, f"sweep: {problem}")


def run_sweep(records: Sequence[dict], classes: Sequence[str], source: FeatureSource, test_x: np.ndarray,
              test_y: np.ndarray, grid: Sequence[Setting] | None = None, fewshot: FewShot | None = None,
              with_fewshot: bool = False, probe: Callable[[], LinearProbe] = LinearProbe, min_count: int = 8,
              check_interrupt: Callable[[], None] = lambda: None,
              progress: Callable[[], None] = lambda: None, *, validation_fraction: float = 0.5, seed: int = 0,
              n_boot: int = 2000, level: float = 0.95) -> SweepResult:
    """``records``: the dataset's live synthetic records of the test classes, any decision.
    ``test_x``, ``test_y``: all the test photos; split into validation / held-out with ``seed``
    (the bootstrap uses ``seed`` too)."""
    classes = tuple(classes)
    test_y = np.asarray(test_y, dtype=np.int64)
    check_sweep(records, classes, grid, fewshot, with_fewshot, test_y, validation_fraction)
    grid = list(default_grid() if grid is None else grid)
    cset = set(classes)
    records = [r for r in records if class_of(r, cset) is not None]
    pos = {c: i for i, c in enumerate(classes)}
    y_all = np.array([pos[class_of(r, cset)] for r in records], dtype=np.int64)
    x_all = source.for_records(records)                 # every image once, whatever it is decided
    stored = np.array([r["decision"] == "accepted" for r in records])
    val, held = stratified_split(test_y, validation_fraction, seed)
    counts = lambda idx: {c: int(n) for c, n in zip(classes, np.bincount(test_y[idx], minlength=len(classes)))}
    split = {"fraction": float(validation_fraction), "seed": int(seed), "validation": counts(val),
             "held_out": counts(held)}
    if with_fewshot:
        fx = [source.for_records(fewshot.records)] if fewshot.records else []
        fx += [source.for_files(fewshot.files)] if fewshot.files else []
        few_x, few_y = np.concatenate(fx), fewshot.labels

    def measure(s: Setting) -> SettingResult:
        if s.method is None:
            keep = stored
        else:
            keep = np.array([d[0] for d in decide_fn_for(s.method, min_count)(list(records))], dtype=bool)
        x, y = x_all[keep], y_all[keep]
        accepted = {c: int(n) for c, n in zip(classes, np.bincount(y, minlength=len(classes)))}
        if with_fewshot:
            x, y = np.concatenate([x, few_x]), np.concatenate([y, few_y])
        if not len(y):
            return SettingResult(s, 0, accepted, int((keep != stored).sum()), None)
        pred = probe().fit(x, y).predict(test_x)
        return SettingResult(s, len(y), accepted, int((keep != stored).sum()),
                             M.compute(test_y[held], pred[held], classes), M.compute(test_y[val], pred[val], classes),
                             pred[held] == test_y[held])

    results = []
    for s in grid:
        check_interrupt()
        results.append(measure(s))
        progress()
    best = best_of(results)
    baseline = next((r for r in results if r.setting.method is None), None)
    if baseline is None and best is not None:
        check_interrupt()
        baseline = measure(Setting(AS_STORED))          # the comparison needs it; not a row of the table
    interval = None
    if best is not None and baseline is not None and baseline.metrics is not None:
        interval = paired_bootstrap(best.correct, baseline.correct, n_boot=n_boot, seed=seed, level=level)
    apply, reason = (False, "no setting accepted anything") if best is None else \
        apply_decision(best.setting.method is None, interval)
    return SweepResult(results, best, bool(with_fewshot), split, baseline, interval, apply, reason)


def apply_best(dataset_dir, best: dict | None, min_count: int = 8):
    """Re-decide the dataset with the sweep's best setting (``EvaluationReport.best``), as Finalize
    would, only when the sweep allows it (``best["apply"]``: the held-out gain over as stored is
    above its bootstrap interval's uncertainty). Returns (Finalize's report or None, one line saying
    what was done or why nothing was)."""
    if not best:
        return None, "apply_best: nothing done: no sweep result"
    if best.get("method") is None or not best.get("apply"):
        why = best.get("apply_reason") or "the best setting is the stored decisions"
        return None, f"apply_best: nothing done: {why}"
    from ..curation.finalize import finalize
    from ..curation.redecide import histogram_image

    method = get_method(best["method"], **(best.get("params") or {}))
    result = finalize(dataset_dir, decide_fn=decide_fn_for(method, min_count=min_count), plot_fn=histogram_image,
                      echo=False)
    return result, f"applied the best setting ({best['name']}): {result.moved}"
