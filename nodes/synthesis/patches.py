"""Pixel work of one pasted object: transform a cutout into a patch, jitter it, paste it.

The cutout is kept premultiplied (colour x alpha) so that resampling never bleeds the colour of
pixels outside the object (the rest of the photo a mask was drawn on) into its edge. Transform
order: horizontal flip (exact), Pillow bilinear resize so the longer side has ``longer`` pixels
(antialiased; skipped when the size is unchanged, so an unscaled cutout keeps its exact pixels),
Pillow bilinear rotation by ``angle`` degrees counter-clockwise with the canvas expanded (skipped
at 0), then a crop to the non-zero alpha. Bilinear weights are non-negative, so alpha stays in
[0, 1] and colour in [0, alpha]: no halo, unlike bicubic or Lanczos.

Compositing: ``none`` is the premultiplied "over": ``P + (1 - A) * background``. ``gaussian``
feathers the edge inward: the alpha becomes ``A * blur(A)`` (a Gaussian of ``sigma`` pixels),
so the object fades out over about 2 sigma inside its outline and nothing is painted outside it
(no colour has to be invented there). The instance mask is always the hard ``A > 0.5``.

Only elementwise float32 arithmetic and Pillow run here (no numpy transcendental functions, whose
SIMD variants differ between CPUs): the same inputs give the same bytes in every process.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .cutouts import Cutout

_BILINEAR = Image.Resampling.BILINEAR


@dataclass(frozen=True)
class Planes:
    """A cutout as four Pillow float images: premultiplied r, g, b and alpha (built once)."""

    size: tuple          # (w, h)
    images: tuple

    @classmethod
    def of(cls, cutout: Cutout) -> Planes:
        alpha = np.ascontiguousarray(cutout.alpha, dtype=np.float32)
        planes = [Image.fromarray(np.ascontiguousarray(cutout.rgb[..., c] * alpha)) for c in range(3)]
        planes.append(Image.fromarray(alpha))   # float32 -> mode F
        return cls((alpha.shape[1], alpha.shape[0]), tuple(planes))


@dataclass(frozen=True)
class Patch:
    premult: np.ndarray | None   # h x w x 3 float32, colour x alpha (None until ``colour()``)
    alpha: np.ndarray            # h x w float32 in [0, 1]
    hard: np.ndarray             # h x w bool: alpha > 0.5, the instance mask
    box: tuple                   # (x, y, w, h) of ``hard`` inside the patch, tight
    source: tuple = ()           # (planes, geometry, crop) to make the colour from

    @property
    def shape(self) -> tuple:
        return self.alpha.shape

    def colour(self) -> Patch:
        """This patch with its premultiplied colour planes transformed the same way as its alpha."""
        if self.premult is not None:
            return self
        planes, args, crop = self.source
        images = _geometry(planes.images[:3], *args)
        premult = np.stack([np.asarray(im, dtype=np.float32)[crop] for im in images], axis=2)
        return Patch(premult, self.alpha, self.hard, self.box)


def target_size(size: tuple, longer: int) -> tuple:
    """(w, h) after scaling so the longer side has ``longer`` pixels (each side at least 1)."""
    w, h = size
    f = longer / max(w, h)
    return max(1, round(w * f)), max(1, round(h * f))


def _geometry(images: tuple, size: tuple, longer: int, angle: float, flip: bool) -> tuple:
    if flip:
        images = tuple(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images)
    target = target_size(size, longer)
    if target != size:
        images = tuple(im.resize(target, _BILINEAR) for im in images)
    if angle:
        images = tuple(im.rotate(angle, resample=_BILINEAR, expand=True) for im in images)
    return images


def transform(planes: Planes, longer: int, angle: float, flip: bool) -> Patch | None:
    """The cutout flipped, scaled, rotated and cropped to its non-zero alpha; None when no pixel is
    more than half opaque any more (a thin object scaled or rotated away). The colour planes are
    left for ``Patch.colour``: a placement that does not fit never pays for them."""
    args = (planes.size, longer, angle, flip)
    alpha = np.asarray(_geometry(planes.images[3:], *args)[0], dtype=np.float32)
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if not len(rows):
        return None
    crop = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    alpha = np.clip(alpha[crop], 0.0, 1.0)
    hard = alpha > 0.5
    rows, cols = np.flatnonzero(hard.any(axis=1)), np.flatnonzero(hard.any(axis=0))
    if not len(rows):
        return None
    box = (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
    return Patch(None, alpha, hard, box, (planes, args, crop))


def jitter(patch: Patch, brightness: float, contrast: float, saturation: float) -> Patch:
    """Colour jitter of the object (factors 1 = unchanged): brightness scales, contrast stretches
    around the object's mean gray, saturation mixes with its own gray (Rec. 601 weights)."""
    patch = patch.colour()
    a = patch.alpha
    safe = np.where(a > 0, a, np.float32(1))
    rgb = patch.premult / safe[..., None]
    rgb = rgb * np.float32(brightness)
    gray = rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587) + rgb[..., 2] * np.float32(0.114)
    values = gray[patch.hard]
    mean = np.float32(math.fsum(values.tolist()) / len(values))   # exact sum: no SIMD-dependent order
    rgb = (rgb - mean) * np.float32(contrast) + mean
    gray = (gray - mean) * np.float32(contrast) + mean
    rgb = gray[..., None] + (rgb - gray[..., None]) * np.float32(saturation)
    rgb = np.clip(rgb, 0.0, 1.0)
    return Patch((rgb * a[..., None]).astype(np.float32), a, patch.hard, patch.box)


def gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(3 * sigma))
    w = [math.exp(-(k * k) / (2 * sigma * sigma)) for k in range(-radius, radius + 1)]
    s = sum(w)
    return np.array([v / s for v in w], dtype=np.float32)


def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur, zero outside ``a`` (shifted sums: fixed order, same bytes everywhere)."""
    kernel = gaussian_kernel(sigma)
    r = len(kernel) // 2
    out = a
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        padded = np.pad(out, pad)
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for k, w in enumerate(kernel):
            acc += w * (padded[k:k + n] if axis == 0 else padded[:, k:k + n])
        out = acc
    return out


def paste(image: np.ndarray, patch: Patch, x: int, y: int, sigma: float | None) -> None:
    """Composite ``patch`` with its top-left corner at (x, y) into ``image`` (in place); ``sigma``
    None = hard edges (``none``), else the inward Gaussian feather."""
    patch = patch.colour()
    h, w = patch.shape
    region = image[y:y + h, x:x + w]
    if sigma is None:
        region[...] = patch.premult + (np.float32(1) - patch.alpha)[..., None] * region
    else:
        b = blur(patch.alpha, sigma)
        region[...] = patch.premult * b[..., None] + (np.float32(1) - patch.alpha * b)[..., None] * region
