"""Cutouts and backgrounds for the copy-paste tests, made from ``skimage.data`` photos: a coffee
cup cut out by a disc mask file, a cat with a soft elliptical alpha, an astronaut cut out by a
brightness threshold (JPEG + mask); backgrounds of mixed sizes and modes (grayscale, RGB JPEG,
16-bit)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

CUP_RADIUS = 60       # the cup's disc mask: a 121 x 121 cutout


def save(path: Path, array, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    image.save(path, **kw)
    return path


def disc(shape, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def soft_ellipse(shape, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """uint8 alpha: 255 inside, a linear ramp over the outer fifth, 0 outside."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return (np.clip((1.0 - d) / 0.2, 0.0, 1.0) * 255).round().astype(np.uint8)


def make_cutouts(root: Path) -> Path:
    coffee = data.coffee()                                   # 400 x 600 RGB
    save(root / "cup" / "coffee.png", coffee)
    save(root / "cup" / "coffee_mask.png", (disc(coffee.shape[:2], 200, 300, CUP_RADIUS) * 255).astype(np.uint8))
    cat = data.chelsea()                                     # 300 x 451 RGB
    save(root / "cat" / "chelsea.png", np.dstack([cat, soft_ellipse(cat.shape[:2], 150, 200, 90, 120)]))
    astro = data.astronaut()                                 # 512 x 512 RGB
    gray = astro.mean(axis=2)
    mask = np.zeros(gray.shape, bool)
    mask[20:200, 150:350] = gray[20:200, 150:350] > 180      # the helmet and the bright suit
    save(root / "astronaut" / "astronaut.jpg", astro, quality=95)
    save(root / "astronaut" / "astronaut_mask.png", (mask * 255).astype(np.uint8))
    return root


def make_backgrounds(folder: Path) -> Path:
    save(folder / "camera.png", data.camera())                       # 512 x 512 grayscale
    save(folder / "rocket.jpg", data.rocket(), quality=90)           # 427 x 640 RGB
    save(folder / "moon16.png", data.moon().astype(np.uint16) * 257)   # 16-bit grayscale
    (folder / "notes.txt").write_text("not an image: ignored")
    return folder
