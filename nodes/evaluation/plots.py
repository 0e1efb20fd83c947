"""Confusion-matrix images drawn with Pillow: rows are the true classes, columns the predicted
ones, each cell shows its count and is shaded by its share of the row (the class's recall on the
diagonal). Returned as H x W x 3 float32 in [0, 1] (a ComfyUI IMAGE row) and saved as PNG."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..store.fsio import write_atomic

BG, TEXT, GRID = (255, 255, 255), (20, 20, 20), (200, 200, 200)
LOW, HIGH = np.array([247, 251, 255]), np.array([8, 69, 148])   # white -> dark blue
MAX_LABEL = 28            # characters of a class name shown
FONT_SIZE = 14
PAD = 10


def _font(size: int = FONT_SIZE):
    try:
        return ImageFont.load_default(size=size)     # scalable when Pillow has FreeType
    except TypeError:                                # Pillow < 10.1
        return ImageFont.load_default()


def _short(name: str) -> str:
    return name if len(name) <= MAX_LABEL else name[:MAX_LABEL - 1] + "…"


def _size(draw, text, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def confusion_image(confusion, classes: Sequence[str], title: str = "") -> np.ndarray:
    """The matrix as an image, H x W x 3 float32 in [0, 1]."""
    cm = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {k} classes")
    font, small = _font(), _font(FONT_SIZE - 2)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    names = [_short(c) for c in classes]
    name_w = max(_size(probe, n, font)[0] for n in names)
    line_h = _size(probe, "Ag", font)[1] + 4
    count_w = _size(probe, str(int(cm.max()) if cm.size else 0), font)[0]
    cell = max(36, count_w + 12)
    left = PAD + line_h + name_w + PAD              # "true" axis label, then row names
    top = PAD + (2 * line_h if title else 0) + line_h + name_w + PAD   # title, "predicted", column names
    width = max(left + k * cell + PAD, PAD * 2 + _size(probe, title, font)[0])
    height = top + k * cell + PAD
    img = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(img)
    y = PAD
    if title:
        draw.text((PAD, y), title, fill=TEXT, font=font)
        y += 2 * line_h
    draw.text((left, y), "predicted", fill=TEXT, font=small)
    # column names, rotated to read bottom-up
    for j, n in enumerate(names):
        w, h = _size(probe, n, font)
        label = Image.new("RGB", (w + 2, line_h), BG)
        ImageDraw.Draw(label).text((1, 0), n, fill=TEXT, font=font)
        label = label.rotate(90, expand=True)
        img.paste(label, (left + j * cell + (cell - label.width) // 2, top - PAD // 2 - label.height))
    # the "true" axis label, rotated, left of the row names
    axis = Image.new("RGB", (_size(probe, "true", small)[0] + 2, line_h), BG)
    ImageDraw.Draw(axis).text((1, 0), "true", fill=TEXT, font=small)
    axis = axis.rotate(90, expand=True)
    img.paste(axis, (PAD, top + max(0, (k * cell - axis.height) // 2)))
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    for i, n in enumerate(names):
        w, h = _size(probe, n, font)
        draw.text((left - PAD - w, top + i * cell + (cell - h) // 2 - 2), n, fill=TEXT, font=font)
        for j in range(k):
            colour = tuple(int(v) for v in np.round(LOW + share[i, j] * (HIGH - LOW)))
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=colour, outline=GRID)
            text = str(int(cm[i, j]))
            tw, th = _size(probe, text, font)
            draw.text((x0 + (cell - tw) // 2, y0 + (cell - th) // 2 - 2), text,
                      fill=(255, 255, 255) if share[i, j] > 0.5 else TEXT, font=font)
    return np.asarray(img, dtype=np.float32) / 255.0


def side_by_side(images: Sequence[np.ndarray], gap: int = 12) -> np.ndarray:
    """One image holding several (top-aligned, white between): a single preview of every arm."""
    if not images:
        return np.ones((64, 64, 3), dtype=np.float32)
    h = max(im.shape[0] for im in images)
    w = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    out = np.ones((h, w, 3), dtype=np.float32)
    x = 0
    for im in images:
        out[:im.shape[0], x:x + im.shape[1]] = im
        x += im.shape[1] + gap
    return out


def save_png(image: np.ndarray, path: Path) -> Path:
    """Write a float image (H x W x 3 in [0, 1]) as PNG, atomically."""
    arr = np.clip(np.round(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)
    write_atomic(Path(path), lambda f: Image.fromarray(arr).save(f, format="PNG"))
    return Path(path)
