"""Binary morphology with numpy shifts (outside the array is background): erosion and dilation
by a digital disk given as row spans, computed with cumulative sums. Shared by the defect mask
sampler (minimum width) and the change detector (opening), tested against scikit-image there."""
from __future__ import annotations

import numpy as np


def disk_rows(d: int) -> list[tuple[int, int, int]]:
    """Rows ``(dy, x0, x1)`` of the digital disk of diameter ``d`` (pixel centres within d/2 of
    its centre), as offsets from its pixel ``((d-1)//2, (d-1)//2)``."""
    a = (d - 1) // 2
    rows = []
    for oy in range(d):
        xs = [ox for ox in range(d) if (2 * ox - d + 1) ** 2 + (2 * oy - d + 1) ** 2 <= d * d]
        if xs:
            rows.append((oy - a, xs[0] - a, xs[-1] - a))
    return rows


def _window(a: np.ndarray, x0: int, x1: int, every: bool) -> np.ndarray:
    h, w = a.shape
    k = max(abs(x0), abs(x1))
    c = np.zeros((h, w + 2 * k + 1), np.int32)
    c[:, k + 1:k + 1 + w] = np.cumsum(a, axis=1, dtype=np.int32)
    c[:, k + 1 + w:] = c[:, k + w:k + w + 1]
    s = c[:, k + x1 + 1:k + x1 + 1 + w] - c[:, k + x0:k + x0 + w]
    return s == (x1 - x0 + 1) if every else s > 0


def _rows_shifted(a: np.ndarray, dy: int) -> np.ndarray:
    """out[y] = a[y + dy]."""
    out = np.zeros_like(a)
    h = a.shape[0]
    if abs(dy) < h:
        if dy >= 0:
            out[:h - dy] = a[dy:]
        else:
            out[-dy:] = a[:h + dy]
    return out


def erode(mask: np.ndarray, rows) -> np.ndarray:
    out = np.ones(mask.shape, bool)
    for dy, x0, x1 in rows:
        out &= _rows_shifted(_window(mask, x0, x1, True), dy)
    return out


def dilate(mask: np.ndarray, rows) -> np.ndarray:
    out = np.zeros(mask.shape, bool)
    for dy, x0, x1 in rows:
        out |= _rows_shifted(_window(mask, -x1, -x0, False), -dy)
    return out
