"""The demo's few-shot photo set, in ImageFolder layout (``<set>/<label>/<image>``): the user's own
photos (``--real-images``), copied into the workspace within a budget, or a few drawn placeholders
per class (plates and bowls as discs and rings on a table colour, stained for the dirty classes)."""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw

from ...nodes.fewshot.imageset import scan

PER_CLASS = 3
SIZE = 128
MAX_FILES, MAX_BYTES = 2_000, 2 << 30
TABLE = ((150, 111, 76), (176, 134, 92), (122, 94, 70), (196, 172, 134))   # wood and linen
STAINS = ((112, 74, 38), (150, 112, 40), (88, 60, 44), (164, 62, 40))      # gravy, mustard, coffee, tomato


def _draw(label: str, i: int, size: int) -> tuple[tuple, Image.Image, tuple[float, float, float]]:
    """(table colour, the object alone as RGBA on transparency, its disc (cx, cy, r)): a plate (disc
    with a rim) or a bowl (ring around a shaded well), stained when the label says dirty. Every stroke
    is opaque and kept inside the disc (stains are clipped to it), so the alpha is exactly the drawn
    disc (0 or 255)."""
    rnd = random.Random(f"{label}/{i}")
    table = rnd.choice(TABLE)
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    cx, cy = (size / 2 + rnd.uniform(-size / 20, size / 20) for _ in range(2))
    r = size * rnd.uniform(0.32, 0.42)

    def disc(radius, fill, outline=None, width=1):
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill and (*fill, 255),
                     outline=outline and (*outline, 255), width=width)

    white = rnd.randint(228, 250)
    disc(r, (white, white, white - rnd.randint(0, 12)))
    if label.startswith("bowl"):
        disc(r * 0.68, (white - 45, white - 45, white - 50))          # the well, in shadow
    else:
        disc(r * 0.72, None, outline=(white - 25,) * 3, width=max(1, size // 64))   # the plate's rim
    if "dirty" in label:
        stains = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        spots = ImageDraw.Draw(stains)
        for _ in range(rnd.randint(6, 10) if "heavily" in label else rnd.randint(2, 4)):
            sx, sy = cx + rnd.uniform(-0.6, 0.6) * r, cy + rnd.uniform(-0.6, 0.6) * r
            w, h = rnd.uniform(0.06, 0.2) * r, rnd.uniform(0.06, 0.2) * r
            spots.ellipse((sx - w, sy - h, sx + w, sy + h), fill=(*rnd.choice(STAINS), 255))
        stains.putalpha(ImageChops.multiply(stains.getchannel("A"), img.getchannel("A")))   # on the dish only
        img.alpha_composite(stains)
    return table, img, (cx, cy, r)


def draw_placeholder(label: str, i: int, size: int = SIZE) -> Image.Image:
    """A plate or a bowl (see ``draw_cutout``) on a table colour. The same (label, i) always gives
    the same pixels."""
    table, obj, _ = _draw(label, i, size)
    img = Image.new("RGB", (size, size), table)
    img.paste(obj, (0, 0), obj)
    return img


def draw_cutout(label: str, i: int, size: int = SIZE) -> Image.Image:
    """The object of ``draw_placeholder(label, i)`` alone, drawn at ``size`` on transparency: an RGBA
    cutout whose alpha is exactly the object (known when drawing, nothing is segmented)."""
    return _draw(label, i, size)[1]


def placeholder_disc(label: str, i: int, size: int = SIZE) -> tuple[float, float, float]:
    """Centre and radius (cx, cy, r) of the object's disc in ``draw_cutout(label, i, size)``."""
    return _draw(label, i, size)[2]


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


def check_budget(src: Path, flag: str, layout: str, max_files: int, max_bytes: int, enough: str) -> None:
    """Refuse ``src`` (one line naming ``flag`` and the folder) unless it is a folder of at most
    ``max_files`` files and ``max_bytes`` bytes, counted before anything is read or copied."""
    if not src.is_dir():
        raise ValueError(f"{flag} {src}: not a folder; expected {layout}")
    files = size = 0
    for dirpath, _, names in os.walk(src):
        for name in names:
            files += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
            if files > max_files or size > max_bytes:
                raise ValueError(f"{flag} {src}: more than {max_files:,} files or {max_bytes / 2**30:g} GiB; "
                                 f"the demo copies at most that much ({enough})")


def copy_photo_set(src, dest, labels, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES) -> list:
    """Copy the images (and captions) of the ImageFolder ``src`` to ``dest`` (replaced); returns the
    scanned images. Refused with one line naming ``src``: more than ``max_files`` files or
    ``max_bytes`` bytes, a layout ``nodes.fewshot.imageset.scan`` refuses, a label not in ``labels``."""
    src = Path(src).expanduser()
    check_budget(src, "--real-images", "<folder>/<label>/<image> (e.g. plate_clean/1.jpg)", max_files, max_bytes,
                 "a few photos per class are enough")
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
