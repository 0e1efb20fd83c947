"""A chosen part of the user's real images, as one value nodes pass around (``RealSet``): the
pixels as one batch for training, and the images as dataset items marked ``source: real``.

Budgets: the batch is refused above ``MAX_BATCH_BYTES`` of float32 pixels (name the count and
size to lower), and an image file above ``MAX_FILE_BYTES`` is not hashed or decoded.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..common.hashing import sha256_file
from ..common.memory import MAX_OUTPUT_BYTES, planes_bytes
from ..common.records import ScoredItem
from .imageset import FewShotError, RealImage, caption_of, split
from .pixels import FITS, load_image

PARTS = ("train", "held_out", "all")
MAX_BATCH_BYTES = MAX_OUTPUT_BYTES   # the one output budget (8 GiB of float32 pixels: ~680 images at 1024 px)
MAX_FILE_BYTES = 256 * 1024 ** 2
SOURCE = "real"


@dataclass(frozen=True)
class RealSet:
    """Which real images a graph uses, and how they are fitted: the few-shot node's handle."""

    root: Path
    images: tuple            # RealImage, in (label, file name) order
    captions: tuple          # one per image: its .txt, else the pack's caption
    size: int
    fit: str
    part: str                # train | held_out | all
    holdout: float
    seed: int

    @property
    def labels(self) -> list[str]:
        return [im.label for im in self.images]

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.labels).items()))


def select(images: Sequence[RealImage], part: str, holdout: float, seed: int) -> list[RealImage]:
    """The ``part`` of a seeded, stratified split (``imageset.split``); ``all`` ignores the split."""
    if part not in PARTS:
        raise FewShotError(None, f"part must be one of {', '.join(PARTS)}, got {part!r}")
    train, held = split(images, holdout, seed)
    if part == "held_out" and not held:
        raise FewShotError(None, f"the held_out part is empty: holdout={holdout} keeps no image out of any "
                           "class (each class keeps at least one image for training); raise holdout")
    return {"train": train, "held_out": held, "all": list(images)}[part]


def make_set(root, images: Sequence[RealImage], caption_fallback: Callable[[str], str], *, size: int,
             fit: str = "crop", part: str = "train", holdout: float = 0.0, seed: int = 0) -> RealSet:
    """The chosen part with a caption per image (checked now, so a bad label fails before any
    pixel is decoded)."""
    if fit not in FITS:
        raise FewShotError(None, f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    chosen = select(images, part, holdout, seed)
    check_budget(len(chosen), size)
    captions = tuple(caption_of(im, caption_fallback) for im in chosen)
    return RealSet(Path(root), tuple(chosen), captions, size, fit, part, float(holdout), int(seed))


def check_budget(count: int, size: int) -> None:
    need = planes_bytes(count, size, 3)
    if need > MAX_BATCH_BYTES:
        raise FewShotError(None, f"{count} images at {size} x {size} need {need / 1024 ** 3:.1f} GiB as one float32 "
                           f"batch; at most {MAX_BATCH_BYTES / 1024 ** 3:.0f} GiB are loaded: lower size, use part "
                           "'train' with a holdout, or split the folder")


def load_batch(realset: RealSet, check_interrupt: Callable[[], None] = lambda: None) -> np.ndarray:
    """``N x size x size x 3`` float32 in [0, 1]; every file is checked before the batch is built
    (``FewShotError`` names the first bad one)."""
    out = np.empty((len(realset.images), realset.size, realset.size, 3), dtype=np.float32)
    for i, image in enumerate(realset.images):
        check_interrupt()
        out[i] = load_image(image.path, realset.size, realset.fit)
    return out


def file_digest(path) -> str:
    """sha256 of the file's bytes: a real image's identity in a dataset (renaming or moving the
    folder does not import it twice)."""
    try:
        size = os.stat(path, follow_symlinks=False).st_size
        if size > MAX_FILE_BYTES:
            raise FewShotError(path, f"file is {size / 1024 ** 2:.0f} MiB; real images above "
                               f"{MAX_FILE_BYTES / 1024 ** 2:.0f} MiB are not read")
        return sha256_file(path)
    except OSError as e:
        raise FewShotError(path, f"cannot be read ({e.strerror or e})") from None


def item_key(digest: str) -> str:
    return f"{SOURCE}:{digest[:32]}"


def real_item(realset: RealSet, i: int, digest: str, counts_toward_quota: bool = False,
              load: bool = True) -> ScoredItem:
    """Image ``i`` of the set as an accepted dataset item: never filtered (no score), marked
    ``source: real``, its caption as the prompt. ``load=False`` leaves the pixels out (enough for
    its item id)."""
    image = realset.images[i]
    meta = {"source": SOURCE, "item_id": item_key(digest), "real_file": f"{image.label}/{image.path.name}",
            "sha256": digest, "caption": realset.captions[i], "counts_toward_quota": bool(counts_toward_quota)}
    pixels = load_image(image.path, realset.size, realset.fit) if load else None
    return ScoredItem(image=pixels, label=image.label, prompt=realset.captions[i], metadata=meta,
                      accepted=True, reason=SOURCE)


def summary(realset: RealSet, from_txt: int, fallback: str = "the prompt pack") -> str:
    """The few-shot node's text: what was read and how it was captioned."""
    counts = realset.counts()
    part = "every image" if realset.part == "all" else (
        f"part {realset.part} of a {realset.holdout:g} holdout split (seed {realset.seed})")
    lines = [f"{len(realset.images)} real images in {len(counts)} classes from {realset.root} ({part}), "
             f"{realset.size} x {realset.size} ({realset.fit})",
             f"captions: {from_txt} from .txt files, {len(realset.images) - from_txt} from {fallback}"]
    lines += [f"{label}: {n}" for label, n in counts.items()]
    return "\n".join(lines)
