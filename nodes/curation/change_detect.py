"""The change detector of the mask IoU filter (``mask_iou``): where a generated image differs from
its source, as a clean binary mask, in numpy only (no OpenCV or scipy at runtime).

Inpainting that pastes the source back outside the mask changes only the defect, so the changed
region is a detector-free prediction of where the defect landed. Every step is a plain numpy
building block, tested against skimage: a separable gaussian, Otsu's threshold, erosion and
dilation by a digital disk (row spans, cumulative sums), connected components (union-find over
horizontal runs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..common.morphology import dilate, disk_rows, erode
from ..scoring.errors import ClipFilterError

OTSU_FLOOR = 0.03                # an Otsu split of pure noise (nothing changed) stays empty
MAX_PIXELS = 8192 * 8192


class MaskIoUError(ClipFilterError):
    """Bad input to the mask IoU filter or its change detector; ``location`` names the item or
    parameter."""


def size_text(shape) -> str:
    """``W x H`` of an array shape."""
    return f"{shape[1]} x {shape[0]}"


@dataclass
class ChangeMask:
    mask: np.ndarray                   # H x W bool
    params: dict = field(default_factory=dict)   # JSON-serialisable: what made it


def predicted_from_change(source, generated, threshold=0.1, sigma: float = 1.5, min_area: int = 32,
                          opening: int = 1, edge: str = "half", where: str = "item") -> ChangeMask:
    """What changed between ``source`` and ``generated`` (float H x W x 3 in [0, 1]): the
    per-pixel colour distance (Euclidean over RGB / sqrt 3, so in [0, 1]), smoothed by a gaussian of
    ``sigma`` px, above ``threshold`` (a number, or "otsu": Otsu's split of the smoothed distance,
    at least ``OTSU_FLOOR``), opened by a disk of radius ``opening`` px, without components
    (8-connected) smaller than ``min_area`` px and with holes smaller than ``min_area`` filled.
    ``edge="half"`` then puts each component's edge where the change falls below half its median:
    a soft-edged paste changes its rim by a fraction only, and a fixed threshold below half the
    contrast would grow the mask by the blend width, which thin masks cannot afford
    (``edge="threshold"`` keeps the threshold's edge).

    Only useful when the generator leaves the unmasked area as it was (inpainting that pastes the
    source back); a whole-image VAE round trip changes every pixel a little (raise the threshold).
    """
    src, gen = _image(source, f"{where} source"), _image(generated, f"{where} generated")
    if src.shape != gen.shape:
        raise MaskIoUError(f"source is {size_text(src.shape)} but generated is {size_text(gen.shape)}; they are not "
                           "resized", where)
    auto = isinstance(threshold, str)
    if auto and threshold != "otsu" or not auto and not (isinstance(threshold, (int, float))
                                                         and not isinstance(threshold, bool) and 0 < threshold < 1):
        raise MaskIoUError(f"threshold must be a number in (0, 1) or 'otsu', got {threshold!r}", "threshold")
    if edge not in ("half", "threshold"):
        raise MaskIoUError(f"edge must be 'half' or 'threshold', got {edge!r}", "edge")
    for name, value, hi in (("sigma", sigma, 20), ("min_area", min_area, 1 << 20), ("opening", opening, 50)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= hi \
                or name != "sigma" and not isinstance(value, int):
            raise MaskIoUError(f"{name} must be {'a number' if name == 'sigma' else 'an integer'} in 0..{hi}, "
                               f"got {value!r}", name)
    diff = np.sqrt(((src - gen) ** 2).sum(axis=2) / 3.0)
    diff = gaussian(diff, float(sigma))
    value = max(otsu(diff), OTSU_FLOOR) if auto else float(threshold)
    mask = diff > value
    if opening:
        rows = disk_rows(2 * opening + 1)
        mask = dilate(erode(mask, rows), rows)
    mask, removed = _without_small(mask, min_area)
    if edge == "half":                # a soft edge's middle: half the component's median change
        labels, sizes = components(mask)
        mask = diff > 0.5 * _medians(diff, labels, sizes)[labels]
        mask &= labels > 0
        if opening:
            mask = dilate(erode(mask, rows), rows)
        mask, more = _without_small(mask, min_area)
        removed += more
    holes, hole_sizes = components(~mask, connectivity=4)
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    fill = hole_sizes < min_area
    fill[0] = False
    fill[border] = False
    mask |= fill[holes]
    params = {"method": "colour_change", "threshold": threshold if auto else value, "threshold_used": value,
              "edge": edge, "sigma": float(sigma), "min_area": int(min_area), "opening": int(opening),
              "components_removed": removed, "holes_filled": int(fill.sum()),
              "components": int(len(components(mask)[1]) - 1)}
    return ChangeMask(mask, params)


def _without_small(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, int]:
    labels, sizes = components(mask)
    keep = sizes >= min_area
    keep[0] = False
    return keep[labels], int(len(sizes) - 1 - keep.sum())


def _medians(values: np.ndarray, labels: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Per component, the median of ``values`` over its pixels (index 0, background: inf)."""
    out = np.full(len(sizes), np.inf)
    if len(sizes) > 1:
        fg = labels > 0
        lab, val = labels[fg], values[fg]
        order = np.lexsort((val, lab))
        lab, val = lab[order], val[order]
        ids = np.arange(1, len(sizes))
        start = np.searchsorted(lab, ids)
        out[1:] = (val[start + (sizes[1:] - 1) // 2] + val[start + sizes[1:] // 2]) / 2
    return out


def _image(x, where: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]                                  # a ComfyUI IMAGE of one picture
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3 or not a.size:
        raise MaskIoUError(f"an image must be H x W x 3, got shape {a.shape}", where)
    if a.shape[0] * a.shape[1] > MAX_PIXELS:
        raise MaskIoUError(f"image is {size_text(a.shape)}; at most 8192 x 8192 are compared", where)
    if not np.isfinite(a).all() or a.min() < -1e-6 or a.max() > 1 + 1e-6:
        raise MaskIoUError("image values must be finite and in [0, 1] (float)", where)
    return a


def gaussian(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable gaussian blur, edges mirrored (numpy only)."""
    if sigma <= 0:
        return a
    r = max(1, math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(a, pad, mode="symmetric")
        n = a.shape[axis]
        a = sum(w * (p[j:j + n] if axis == 0 else p[:, j:j + n]) for j, w in enumerate(k))
    return a


def otsu(a: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the split that maximises the between-class variance."""
    hist = np.histogram(np.clip(a, 0, 1), bins=bins, range=(0.0, 1.0))[0].astype(np.float64)
    centres = (np.arange(bins) + 0.5) / bins
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * centres)
    total, mean = w0[-1], m0[-1]
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean * w0 - total * m0) ** 2 / (w0 * w1)
    between = np.nan_to_num(between[:-1], nan=0.0, posinf=0.0)
    return float((np.argmax(between) + 1) / bins)


# ---- connected components (numpy; outside the array is background) -----------------------------------

def components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(labels int32 H x W, 0 = background; sizes, sizes[0] = background) of the connected
    components. Union-find over horizontal runs: memory and time O(runs), never per pixel in Python."""
    h, w = mask.shape
    edges = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    ys, starts = np.nonzero(edges == 1)
    ends = np.nonzero(edges == -1)[1]            # exclusive; same row-major order as the starts
    n = len(ys)
    if n == 0:
        return np.zeros((h, w), np.int32), np.array([h * w])
    slack = 1 if connectivity == 8 else 0
    stride = w + 2
    key_start, key_end = ys * stride + starts, ys * stride + ends
    lo = np.searchsorted(key_end, (ys + 1) * stride + starts - slack, side="right")
    hi = np.searchsorted(key_start, (ys + 1) * stride + ends + slack, side="left")
    count = np.maximum(hi - lo, 0)
    a = np.repeat(np.arange(n), count)
    b = np.repeat(lo, count) + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    parent = np.arange(n)
    while True:                                  # hook roots to the smaller root, then compress
        while True:
            grand = parent[parent]
            if (grand == parent).all():
                break
            parent = grand
        ra, rb = parent[a], parent[b]
        diff = ra != rb
        if not diff.any():
            break
        low = np.minimum(ra[diff], rb[diff])
        np.minimum.at(parent, ra[diff], low)
        np.minimum.at(parent, rb[diff], low)
    roots, run_label = np.unique(parent, return_inverse=True)
    run_label = run_label + 1
    delta = np.zeros(h * w + 1, np.int64)
    np.add.at(delta, ys * w + starts, run_label)
    np.add.at(delta, ys * w + ends, -run_label)
    labels = np.cumsum(delta[:-1]).reshape(h, w).astype(np.int32)
    sizes = np.bincount(run_label, weights=ends - starts, minlength=len(roots) + 1).astype(np.int64)
    sizes[0] = h * w - sizes[1:].sum()
    return labels, sizes
