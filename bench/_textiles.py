"""Textile material for bench_evaluation.py: the real images, the defect cutouts of the ``local``
shots, and the two CPU synthesis routes (augmentation; copy-paste through ``CopyPaste``).

The data: ``conformal-clip-data`` (MIT), ``textile_images/simulated/{nominal,local,global}``,
250 x 250 grayscale JPEGs stored as RGB. ``local`` = one small salt-and-pepper mark (about 13 x 21
px) on the nominal weave; ``global`` = the whole weave finer (more high-frequency energy).

Two properties of this set decide which augmentations keep a label (measured on 40 images per
class, gradient structure tensor and FFT): the weave is oriented the same way in every image of
every class (dominant gradient angle 60 +- 1.3 degrees), and ``global`` differs from ``nominal``
mainly by its high-frequency energy (share of spectral energy above 0.15 cycles/px: 0.51 vs 0.40,
sd 0.01 within a class), which any resampling destroys (a 240 -> 250 px bilinear crop-resize
drops it to 0.24 / 0.33). So only pixel-exact geometry is used: rotation by 180 degrees (keeps the
orientation; 90-degree rotations and single flips would show a weave direction no real image has)
and no crops, scaling or free-angle rotation; plus brightness / contrast jitter of +-10 % (the real
images' means and standard deviations vary by about that much).

Copy-paste (``local`` only): the mark of each local shot is found without its label position (the
peak of the 5 x 5 sum of |image - 3x3 median|, which separates every local image from every
nominal and global one on the first 100 of each: peak / median 2.99..5.81 vs 2.02..2.76), grown to
its connected component above half the peak, dilated by 2 px, and feathered (alpha = 1-px blur of
the mask). The cutout is written as an RGBA PNG in ``<root>/local/`` and loaded by
``load_cutouts``; one ``CopyPaste`` per cutout with ``scale`` = its longer side / 250 pastes it at
native size (``patches.transform`` then skips the resize, so the speckle keeps its exact pixels),
flipped horizontally at random, no rotation, one object per image, patch jitter 0.1, gaussian
blend (sigma 1), anywhere fully inside the image, on the nominal shots and their 180-degree
rotations as backgrounds. ``nominal`` and ``global`` have nothing to cut out: they use
augmentation in both synthetic arms.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("nominal", "local", "global")
SIZE = 250
JITTER = 0.10                 # brightness and contrast factors in 1 +- JITTER


def data_root() -> Path:
    import conformal_clip_data
    return Path(conformal_clip_data.textile_simulated_root())


def class_files(root: Path) -> dict[str, list[Path]]:
    return {c: sorted((root / c).glob("*.jpg")) for c in CLASSES}


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


# -- the mark of a local shot ------------------------------------------------------------------

def _median3(g: np.ndarray) -> np.ndarray:
    p = np.pad(g, 1, mode="edge")
    h, w = g.shape
    return np.median(np.stack([p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]), axis=0)


def _box_sum(a: np.ndarray, r: int) -> np.ndarray:
    c = np.pad(np.pad(a, r).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    k, (h, w) = 2 * r + 1, a.shape
    return c[k:k + h, k:k + w] - c[:h, k:k + w] - c[k:k + h, :w] + c[:h, :w]


def _component(mask: np.ndarray, seed: tuple) -> np.ndarray:
    from dtgen.nodes.common.morphology import dilate, disk_rows
    rows = disk_rows(3)
    cur = np.zeros_like(mask)
    cur[seed] = True
    while True:
        nxt = dilate(cur, rows) & mask
        nxt[seed] = True
        if np.array_equal(nxt, cur):
            return cur
        cur = nxt


def mark_score(rgb: np.ndarray) -> np.ndarray:
    """Impulse-noise density: 5 x 5 sums of |gray - 3x3 median| (gray in [0, 1])."""
    g = rgb[..., 0].astype(np.float32) / 255.0
    return _box_sum(np.abs(g - _median3(g)), 2)


def defect_alpha(rgb: np.ndarray) -> tuple[np.ndarray, dict]:
    """Soft alpha (float32 [0, 1], SIZE x SIZE) of the mark in a local image, and its box."""
    from dtgen.nodes.common.morphology import dilate, disk_rows
    from dtgen.nodes.synthesis.patches import blur
    s = mark_score(rgb)
    peak = np.unravel_index(int(np.argmax(s)), s.shape)
    region = _component(s > 0.5 * s[peak], peak)
    mask = dilate(region, disk_rows(5))
    alpha = np.clip(blur(mask.astype(np.float32), 1.0), 0.0, 1.0)
    alpha[alpha < 1.5 / 255] = 0.0                 # what rounds to 0 in the 8-bit PNG alpha
    ys, xs = np.nonzero(alpha)
    info = {"peak_ratio": float(s[peak] / np.median(s)), "centre": (int(peak[1]), int(peak[0])),
            "box": (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)),
            "mask_px": int(mask.sum())}
    return alpha.astype(np.float32), info


# -- augmentation --------------------------------------------------------------------------------

def photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float [0, 1] image: brightness x U(1 +- JITTER), then contrast x U(1 +- JITTER) around its mean."""
    b, c = rng.uniform(1 - JITTER, 1 + JITTER, 2)
    out = img.astype(np.float32) * np.float32(b)
    m = np.float32(out.mean())
    return np.clip((out - m) * np.float32(c) + m, 0.0, 1.0)


def augment(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One augmented copy of a uint8 shot: 180-degree rotation with p = 0.5, then ``photometric``."""
    img = rgb.astype(np.float32) / 255.0
    if rng.random() < 0.5:
        img = img[::-1, ::-1]
    return photometric(img, rng)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# -- copy-paste ------------------------------------------------------------------------------------

@dataclass
class CopyPasteLocal:
    """``local`` images: the marks of the local shots pasted on the nominal shots (see the module
    docstring). ``items(n, rng)`` gives n float [0, 1] images, cutouts used in turn."""

    pasters: list
    cutout_info: list

    @classmethod
    def build(cls, local_shots: list[np.ndarray], nominal_shots: list[np.ndarray], folder: Path,
              seed: int) -> CopyPasteLocal:
        from dtgen.nodes.synthesis.backgrounds import load_backgrounds
        from dtgen.nodes.synthesis.copy_paste import CopyPaste
        from dtgen.nodes.synthesis.cutouts import load_cutouts
        (folder / "local").mkdir(parents=True, exist_ok=True)
        infos = []
        for k, rgb in enumerate(local_shots):
            alpha, info = defect_alpha(rgb)
            rgba = np.dstack([rgb, to_uint8(alpha)])
            Image.fromarray(rgba, "RGBA").save(folder / "local" / f"shot{k}.png")
            infos.append(info)
        cutouts = load_cutouts(folder)["local"]
        backgrounds = load_backgrounds([b for s in nominal_shots for b in (s, np.ascontiguousarray(s[::-1, ::-1]))])
        pasters = []
        for cut, info in zip(cutouts, infos):
            longer = max(cut.alpha.shape)
            info["cutout_px"] = tuple(int(v) for v in cut.alpha.shape[::-1])
            s = longer / SIZE
            pasters.append(CopyPaste({"local": [cut]}, backgrounds, SIZE, objects=(1, 1), scale=(s, s),
                                     rotation=0.0, flip=True, jitter=0.1, blend="gaussian", sigma=1.0, seed=seed))
        return cls(pasters, infos)

    def items(self, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        out = []
        for j in range(n):
            item = self.pasters[j % len(self.pasters)].item(j // len(self.pasters))
            out.append(photometric(item.image, rng))
        return out


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="PNG")
    return buf.getvalue()
