"""Is a test photo also a real training (few-shot) image? Found by content, not by file bytes
(issue #27, item 6: a test photo saved again as PNG, identical pixels, other bytes, joined the
few-shot set unnoticed when the check compared sha256 of the files).

Two rules, each test photo against every few-shot image:

- ``pixels``: the decoded pixels are the same: ``pixel_key`` decodes the file (EXIF orientation,
  transparency on white, as every image the evaluation reads), fits the whole image into
  ``KEY_SIZE`` x ``KEY_SIZE`` (``pad``: scaled, aspect kept) and hashes the 8-bit array, so a
  re-saved PNG / lossless WebP / TIFF of the same pixels, at any file size, matches;
- ``embedding``: the image embeddings (the evaluation's CLIP features), *centred* on the mean
  embedding of the test and few-shot images together and L2-normalised, have a cosine of at least
  ``min_cosine`` (default ``NEAR_DUPLICATE_COSINE`` = 0.99): a re-compressed JPEG, a resized copy.
  Centring removes what every image shares (a small CLIP on one kind of material, or a random-init
  one, puts all images in a narrow cone), so the cosine compares what tells photos apart.
  Measured (``bench/bench_evaluation.py --sweep-only`` prints it): with the fixture-trained textile
  CLIP (64-d), 300 held-out textile photos against 300 other ones reached raw cosines up to 0.9925
  with their nearest (2.3 % >= 0.99: false alarms) but centred at most 0.9866 (none), while 30
  re-saved JPEG q75 copies kept >= 0.9998 both ways; once, with the random-init ViT-B-32 of the
  tests, distinct textile / scikit-image photos reached 0.986 raw and 0.82 centred, JPEG copies
  >= 0.9988. Flat colours with faint noise are near-duplicates to it (centred 0.999). A threshold
  above 1 turns the rule off.

A test photo found by both is reported once, by ``pixels``. ``find_leaks`` returns every found
photo with its training twin, the rule and the cosine; ``leak_message`` is the one-line refusal.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..common.vectors import unit_rows
from ..fewshot.pixels import load_image

KEY_SIZE = 64
NEAR_DUPLICATE_COSINE = 0.99
PIXELS, EMBEDDING = "pixels", "embedding"


def pixel_digest(pixels: np.ndarray) -> str:
    """sha256 of an H x W x C array in [0, 1] quantised to 8 bits (shape included)."""
    arr = np.asarray(pixels, dtype=np.float64)
    q = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
    h = hashlib.sha256(repr(q.shape).encode("ascii"))
    h.update(np.ascontiguousarray(q).tobytes())
    return h.hexdigest()


def pixel_key(path) -> str:
    """``pixel_digest`` of the file's decoded pixels fitted into ``KEY_SIZE`` px (raises
    ``FewShotError`` naming a file that cannot be decoded)."""
    return pixel_digest(load_image(path, KEY_SIZE, "pad"))


def pixel_matches(test_keys: Sequence[str], train_keys: Sequence[str]) -> list[tuple[int, int]]:
    """(test index, first training index with the same key), in test order."""
    first: dict[str, int] = {}
    for j, k in enumerate(train_keys):
        first.setdefault(k, j)
    return [(i, first[k]) for i, k in enumerate(test_keys) if k in first]



def centred(test_x, train_x) -> tuple[np.ndarray, np.ndarray]:
    """Both sets' rows L2-normalised, minus the mean row of both sets together, L2-normalised again."""
    a, b = unit_rows(test_x, np.float64), unit_rows(train_x, np.float64)
    if len(a) and len(b) and a.shape[1] != b.shape[1]:
        raise ValueError(f"test features are {a.shape[1]}-d and training features {b.shape[1]}-d")
    if not len(a) or not len(b):
        return a, b
    mu = np.concatenate([a, b]).mean(axis=0)
    return unit_rows(a - mu, np.float64), unit_rows(b - mu, np.float64)


def near_duplicates(test_x, train_x, min_cosine: float = NEAR_DUPLICATE_COSINE,
                    centre: bool = True) -> list[tuple[int, int, float]]:
    """(test index, nearest training index, cosine) for each test row whose nearest training row
    (by cosine; ties: the first) has a cosine >= ``min_cosine``, in test order; ``centre``: the
    cosine of the ``centred`` rows, else of the rows as given."""
    a, b = centred(test_x, train_x) if centre else (unit_rows(test_x, np.float64), unit_rows(train_x, np.float64))
    if not len(a) or not len(b):
        return []
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"test features are {a.shape[1]}-d and training features {b.shape[1]}-d")
    out = []
    for start in range(0, len(a), 1024):          # bounded memory: 1024 x n_train cosines at a time
        cos = a[start:start + 1024] @ b.T
        best = cos.argmax(axis=1)
        for r, j in enumerate(best):
            c = float(cos[r, j])
            if c >= min_cosine:
                out.append((start + r, int(j), c))
    return out


@dataclass(frozen=True)
class Leak:
    test: str            # the test photo
    train: str           # what it is among the training images
    rule: str            # pixels | embedding
    cosine: float        # of their centred embeddings (1.0 for identical pixels)

    def as_dict(self) -> dict:
        return {"test": self.test, "train": self.train, "rule": self.rule, "cosine": round(self.cosine, 6)}

    def text(self) -> str:
        how = ("same decoded pixels" if self.rule == PIXELS else
               f"near-duplicate embedding, centred cosine {self.cosine:.4f}")
        return f"{self.test} = {self.train} ({how})"


def find_leaks(test_names: Sequence[str], train_names: Sequence[str], test_keys: Sequence[str],
               train_keys: Sequence[str], test_x, train_x, min_cosine: float = NEAR_DUPLICATE_COSINE,
               centre: bool = True) -> list[Leak]:
    """Every test photo found among the training images, by ``pixels`` first, then ``embedding``."""
    a, b = centred(test_x, train_x) if centre else (unit_rows(test_x, np.float64), unit_rows(train_x, np.float64))
    found: dict[int, Leak] = {}
    for i, j in pixel_matches(test_keys, train_keys):
        cos = float(a[i] @ b[j]) if len(a) and len(b) else 1.0
        found[i] = Leak(str(test_names[i]), str(train_names[j]), PIXELS, cos)
    for i, j, cos in near_duplicates(a, b, min_cosine, centre=False):
        if i not in found:
            found[i] = Leak(str(test_names[i]), str(train_names[j]), EMBEDDING, cos)
    return [found[i] for i in sorted(found)]


def leak_message(leaks: Sequence[Leak], limit: int = 5) -> str:
    """One line: how many test photos are training images, by which rule, the first ``limit``."""
    rules = {r: sum(1 for x in leaks if x.rule == r) for r in (PIXELS, EMBEDDING)}
    shown = "; ".join(x.text() for x in leaks[:limit]) + ("; ..." if len(leaks) > limit else "")
    return (f"{len(leaks)} test photo(s) are also few-shot training images (by pixels {rules[PIXELS]}, by "
            f"embedding {rules[EMBEDDING]}): {shown}; the test set must be held out from the few-shot images")
