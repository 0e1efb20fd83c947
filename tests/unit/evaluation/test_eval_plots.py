"""Confusion-matrix images: size grows with the classes, cells shaded by row share with counts,
float32 in [0, 1] for a ComfyUI preview, saved as PNG atomically."""
from __future__ import annotations

import numpy as np
import pytest
from dtgen.nodes.evaluation.plots import (
    HIGH,
    LOW,
    confusion_image,
    save_png,
    side_by_side,
)
from PIL import Image


def test_confusion_image_is_a_drawn_float_image():
    cm = np.array([[9, 1, 0], [0, 10, 0], [5, 0, 5]])
    img = confusion_image(cm, ["apple", "banana", "a rather long class name of many words"], "synthetic: 80 %")
    assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3
    assert 0.0 <= img.min() and img.max() <= 1.0
    h, w, _ = img.shape
    assert 150 < h < 800 and 150 < w < 900
    pixels = np.round(img.reshape(-1, 3) * 255).astype(int)
    assert len(np.unique(pixels, axis=0)) > 20                     # text, shades, not blank
    # the 10/10 cell is the darkest blue; a 0 cell is the lightest shade
    assert (np.abs(pixels - HIGH).sum(1) == 0).sum() > 100
    assert (np.abs(pixels - LOW).sum(1) == 0).sum() > 100
    # a half row (5 of 10) gets the middle shade
    mid = np.round(LOW + 0.5 * (HIGH - LOW)).astype(int)
    assert (np.abs(pixels - mid).sum(1) == 0).sum() > 100


def test_more_classes_make_a_larger_image_and_counts_widen_cells():
    small = confusion_image(np.eye(2, dtype=int), ["a", "b"])
    big = confusion_image(np.eye(6, dtype=int) * 3, list("abcdef"))
    wide = confusion_image(np.eye(2, dtype=int) * 123456789, ["a", "b"])
    assert big.shape[0] > small.shape[0] and big.shape[1] > small.shape[1]
    assert wide.shape[1] > small.shape[1]


def test_confusion_image_refuses_a_wrong_shape():
    with pytest.raises(ValueError, match="for 3 classes"):
        confusion_image(np.eye(2), ["a", "b", "c"])


def test_side_by_side_and_png(tmp_path):
    a, b = confusion_image(np.eye(2, dtype=int), ["a", "b"]), confusion_image(np.eye(3, dtype=int), list("abc"))
    both = side_by_side([a, b])
    assert both.shape[0] == max(a.shape[0], b.shape[0]) and both.shape[1] > a.shape[1] + b.shape[1]
    path = save_png(a, tmp_path / "c.png")
    with Image.open(path) as im:
        assert im.size == (a.shape[1], a.shape[0]) and im.mode == "RGB"
        assert np.array_equal(np.asarray(im), np.round(a * 255).astype(np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png"]    # no temp file left
