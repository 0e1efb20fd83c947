"""Classification metrics from integer labels, and the evaluation table.

``compute(y_true, y_pred, classes)`` gives accuracy, macro-F1, per-class precision / recall / F1 and
the confusion matrix (rows: true class, columns: predicted class), with every class of ``classes``
counted, also one never predicted or without true samples. A ratio whose denominator is 0 is 0, as
scikit-learn's ``zero_division=0``: precision of a class never predicted, recall of a class with no
true sample, and F1 = 2 tp / (2 tp + fp + fn) when that denominator is 0. Macro-F1 is the unweighted
mean over ``classes``, as ``f1_score(..., labels=range(len(classes)), average="macro")``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Metrics:
    classes: tuple                 # class names; label i of y_true / y_pred is classes[i]
    confusion: np.ndarray          # int64 [K, K], rows true, columns predicted
    accuracy: float
    macro_f1: float
    precision: dict                # {class: float}
    recall: dict
    f1: dict
    support: dict                  # {class: true samples}

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    def as_dict(self) -> dict:
        """JSON-ready: every number a plain float / int, the matrix as nested lists."""
        return {"n_test": self.n, "accuracy": self.accuracy, "macro_f1": self.macro_f1,
                "precision": dict(self.precision), "recall": dict(self.recall), "f1": dict(self.f1),
                "support": dict(self.support), "classes": list(self.classes),
                "confusion": self.confusion.tolist()}


def _labels(values, n_classes: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of class indices, got shape {arr.shape}")
    whole = np.issubdtype(arr.dtype, np.integer) or (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)))
    if arr.size and not whole:
        raise ValueError(f"{name} must hold integer class indices, got {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= n_classes)]
    if bad.size:
        raise ValueError(f"{name} holds class index {int(bad[0])}, outside 0..{n_classes - 1}")
    return arr


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """int64 [n_classes, n_classes]: entry (i, j) counts samples of class i predicted as j."""
    t = _labels(y_true, n_classes, "y_true")
    p = _labels(y_pred, n_classes, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels and y_pred {p.size}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den > 0)


def compute(y_true, y_pred, classes: Sequence[str]) -> Metrics:
    classes = tuple(classes)
    if not classes:
        raise ValueError("no classes to evaluate")
    cm = confusion_matrix(y_true, y_pred, len(classes))
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * tp, 2 * tp + (predicted - tp) + (support - tp))
    total = cm.sum()
    per = lambda values: {c: float(v) for c, v in zip(classes, values)}
    return Metrics(classes=classes, confusion=cm, accuracy=float(tp.sum() / total) if total else 0.0,
                   macro_f1=float(f1.mean()), precision=per(precision), recall=per(recall), f1=per(f1),
                   support={c: int(v) for c, v in zip(classes, support)})


# -- the table ----------------------------------------------------------------------------------

HEADER = ("arm", "n train", "accuracy", "macro-F1", "per-class recall")


def recall_text(metrics: Metrics) -> str:
    return ", ".join(f"{c} {metrics.recall[c]:.2f}" for c in metrics.classes)


def table_row(arm: str, n_train: int, metrics: Metrics) -> tuple[str, ...]:
    return (arm, str(int(n_train)), f"{100 * metrics.accuracy:.1f} %", f"{metrics.macro_f1:.3f}", recall_text(metrics))


def format_table(rows: Sequence[tuple], header: Sequence[str] = HEADER) -> str:
    """A Markdown table padded to aligned columns (readable as plain text too). ``rows`` are
    ``(arm, n_train, Metrics)`` tuples or already formatted string tuples of ``len(header)``."""
    cells = [tuple(header)] + [table_row(*r) if len(r) == 3 and isinstance(r[2], Metrics) else tuple(map(str, r))
                               for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    right = {i for i, h in enumerate(header) if i and h != header[-1]}   # numbers right-aligned

    def line(row):
        return "| " + " | ".join(v.rjust(w) if i in right else v.ljust(w)
                                 for i, (v, w) in enumerate(zip(row, widths))) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])
