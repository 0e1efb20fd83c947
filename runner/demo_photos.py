"""The demo's few-shot photo set, in ImageFolder layout (``<set>/<label>/<image>``): the user's own
photos (``--real-images``), copied into the workspace within a budget, or a few drawn placeholders
per class (plates and bowls as discs and rings on a table colour, stained for the dirty classes)."""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

from ..nodes.fewshot.imageset import scan

PER_CLASS = 3
SIZE = 128
MAX_FILES, MAX_BYTES = 2_000, 2 << 30
TABLE = ((150, 111, 76), (176, 134, 92), (122, 94, 70), (196, 172, 134))   # wood and linen
STAINS = ((112, 74, 38), (150, 112, 40), (88, 60, 44), (164, 62, 40))      # gravy, mustard, coffee, tomato


def draw_placeholder(label: str, i: int, size: int = SIZE) -> Image.Image:
    """A plate (disc with a rim) or a bowl (ring around a shaded well) on a table colour, with stains
    when the label says dirty. The same (label, i) always gives the same pixels."""
    rnd = random.Random(f"{label}/{i}")
    img = Image.new("RGB", (size, size), rnd.choice(TABLE))
    draw = ImageDraw.Draw(img)
    cx, cy = (size / 2 + rnd.uniform(-size / 20, size / 20) for _ in range(2))
    r = size * rnd.uniform(0.32, 0.42)

    def disc(radius, fill, outline=None, width=1):
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill, outline=outline, width=width)

    white = rnd.randint(228, 250)
    disc(r, (white, white, white - rnd.randint(0, 12)))
    if label.startswith("bowl"):
        disc(r * 0.68, (white - 45, white - 45, white - 50))          # the well, in shadow
    else:
        disc(r * 0.72, None, outline=(white - 25,) * 3, width=max(1, size // 64))   # the plate's rim
    if "dirty" in label:
        for _ in range(rnd.randint(6, 10) if "heavily" in label else rnd.randint(2, 4)):
            sx, sy = cx + rnd.uniform(-0.6, 0.6) * r, cy + rnd.uniform(-0.6, 0.6) * r
            w, h = rnd.uniform(0.06, 0.2) * r, rnd.uniform(0.06, 0.2) * r
            draw.ellipse((sx - w, sy - h, sx + w, sy + h), fill=rnd.choice(STAINS))
    return img


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def placeholder_set(dest, labels, per_class: int = PER_CLASS) -> Path:
    """``dest/<label>/<label>_NN.png``: ``per_class`` drawn placeholders per label (``dest`` is replaced)."""
    dest = _fresh(Path(dest))
    for label in labels:
        (dest / label).mkdir()
        for i in range(per_class):
            draw_placeholder(label, i).save(dest / label / f"{label}_{i:02d}.png")
    return dest


def copy_photo_set(src, dest, labels, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES) -> list:
    """Copy the images (and captions) of the ImageFolder ``src`` to ``dest`` (replaced); returns the
    scanned images. Refused with one line naming ``src``: more than ``max_files`` files or
    ``max_bytes`` bytes, a layout ``nodes.fewshot.imageset.scan`` refuses, a label not in ``labels``."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise ValueError(f"--real-images {src}: not a folder; expected <folder>/<label>/<image> "
                         "(e.g. plate_clean/1.jpg)")
    files = size = 0
    for dirpath, _, names in os.walk(src):
        for name in names:
            files += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
            if files > max_files or size > max_bytes:
                raise ValueError(f"--real-images {src}: more than {max_files:,} files or {max_bytes / 2**30:g} GiB; "
                                 "the demo copies at most that much (a few photos per class are enough)")
    images = scan(src, max_files=max_files)
    unknown = sorted({im.label for im in images} - set(labels))
    if unknown:
        raise ValueError(f"--real-images {src}: class folder(s) {', '.join(unknown)} are not classes of the prompt "
                         f"pack (classes: {', '.join(labels)})")
    dest = _fresh(Path(dest))
    for im in images:
        (dest / im.label).mkdir(exist_ok=True)
        shutil.copyfile(im.path, dest / im.label / im.path.name)
        if im.caption:
            (dest / im.label / im.path.with_suffix(".txt").name).write_text(im.caption, encoding="utf-8")
    return images
