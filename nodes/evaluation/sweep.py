"""The threshold sweep: which filter setting gives the best classifier?

For each setting of a grid (threshold method and k, or "as stored"), the stored scores of the
dataset's synthetic records are re-decided in memory (``curation.redecide.decide_fn_for``, the
code ``python -m runner redecide`` and Finalize use: nothing is moved or written), a linear probe is
trained on the accepted ones (+ the few-shot images when asked) and evaluated on the test set. The
best setting has the highest macro-F1; ties go to the higher accuracy, then to fewer changed
decisions (against the stored ones), then to the earlier setting in the grid.

A class-margin or near-duplicate rejection stays rejected (those checks are not re-run), and a
record stored without a score keeps its decision, as in ``redecide``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..curation.redecide import decide_fn_for
from ..curation.thresholds import ThresholdMethod, get_method
from . import metrics as M
from .arms import FewShot, class_of
from .errors import EvaluationError
from .features import FeatureSource
from .probe import LinearProbe

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
    metrics: M.Metrics | None  # None: nothing accepted, not evaluated

    def as_dict(self) -> dict:
        return {**self.setting.as_dict(), "n_train": self.n_train, "accepted": dict(self.accepted),
                "changes": self.changes, "metrics": None if self.metrics is None else self.metrics.as_dict()}


@dataclass
class SweepResult:
    results: list
    best: SettingResult | None
    with_fewshot: bool

    def table(self) -> str:
        header = ("setting", "n train", "changes", "accuracy", "macro-F1", "per-class recall")
        rows = []
        for r in self.results:
            mark = " *" if r is self.best else ""
            if r.metrics is None:
                rows.append((r.setting.name + mark, str(r.n_train), str(r.changes), "-", "-", "nothing accepted"))
            else:
                _, n, acc, f1, rec = M.table_row(r.setting.name, r.n_train, r.metrics)
                rows.append((r.setting.name + mark, n, str(r.changes), acc, f1, rec))
        return M.format_table(rows, header)

    def as_dict(self) -> dict:
        return {"with_fewshot": self.with_fewshot, "best": None if self.best is None else self.best.setting.name,
                "settings": [r.as_dict() for r in self.results]}


def best_of(results: Sequence[SettingResult]) -> SettingResult | None:
    """Highest macro-F1, then accuracy, then fewest changes, then the first in the grid; settings
    that accepted nothing do not compete."""
    scored = [r for r in results if r.metrics is not None]
    key = lambda r: (round(r.metrics.macro_f1, 12), round(r.metrics.accuracy, 12), -r.changes)
    return max(scored, key=key) if scored else None     # max keeps the first of equal keys


def check_sweep(records, classes, grid, fewshot, with_fewshot) -> None:
    """Refuse a sweep that cannot run: an empty grid, no stored score, few-shot asked but none."""
    if grid is not None and not list(grid):
        raise EvaluationError(None, "sweep: the grid of settings is empty")
    cset = set(classes)
    if not any(r.get("score") is not None and class_of(r, cset) is not None for r in records):
        raise EvaluationError(None, "sweep: the dataset has no scored synthetic image of a test class, so there is "
                              "nothing to re-decide (images stored without the CLIP filter)")
    if with_fewshot and fewshot is None:
        raise EvaluationError(None, "sweep with few-shot images asked, but there are none")


def run_sweep(records: Sequence[dict], classes: Sequence[str], source: FeatureSource, test_x: np.ndarray,
              test_y: np.ndarray, grid: Sequence[Setting] | None = None, fewshot: FewShot | None = None,
              with_fewshot: bool = False, probe: Callable[[], LinearProbe] = LinearProbe, min_count: int = 8,
              check_interrupt: Callable[[], None] = lambda: None,
              progress: Callable[[], None] = lambda: None) -> SweepResult:
    """``records``: the dataset's live synthetic records of the test classes, any decision."""
    classes = tuple(classes)
    check_sweep(records, classes, grid, fewshot, with_fewshot)
    grid = list(default_grid() if grid is None else grid)
    cset = set(classes)
    records = [r for r in records if class_of(r, cset) is not None]
    pos = {c: i for i, c in enumerate(classes)}
    y_all = np.array([pos[class_of(r, cset)] for r in records], dtype=np.int64)
    x_all = source.for_records(records)                 # every image once, whatever it is decided
    stored = np.array([r["decision"] == "accepted" for r in records])
    if with_fewshot:
        fx = [source.for_records(fewshot.records)] if fewshot.records else []
        fx += [source.for_files(fewshot.files)] if fewshot.files else []
        few_x, few_y = np.concatenate(fx), fewshot.labels
    results = []
    for s in grid:
        check_interrupt()
        if s.method is None:
            keep = stored
        else:
            keep = np.array([d[0] for d in decide_fn_for(s.method, min_count)(list(records))])
        x, y = x_all[keep], y_all[keep]
        accepted = {c: int(n) for c, n in zip(classes, np.bincount(y, minlength=len(classes)))}
        if with_fewshot:
            x, y = np.concatenate([x, few_x]), np.concatenate([y, few_y])
        met = None
        if len(y):
            pred = probe().fit(x, y).predict(test_x)
            met = M.compute(test_y, pred, classes)
        results.append(SettingResult(s, len(y), accepted, int((keep != stored).sum()), met))
        progress()
    return SweepResult(results, best_of(results), bool(with_fewshot))
