"""Real backgrounds for copy-paste: a flat folder of images, or arrays given by the caller.

Each background is fitted to the output square like a few-shot image (``fewshot.pixels``, fit
``crop``: the shorter side scaled to the size, the centre kept), so mixed sizes and aspect ratios
are fine; grayscale, 16-bit and palette files become RGB, transparency is composited on white.
Fitting is lazy and cached (least recently used, ``cache_bytes``): a folder of thousands of
photos costs only their hashes up front, and a small set is decoded once.

A background's identity is the sha256 of its file (of its dtype, shape and bytes for an array),
never its path: the same folder moved elsewhere gives the same copy-paste stream.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..common.files import open_regular
from ..fewshot.imageset import IMAGE_SUFFIXES
from ..fewshot.pixels import MAX_PIXELS, MAX_SIZE, MIN_SIZE, load_image, pillow_errors
from ..fewshot.realset import file_digest
from .errors import SynthesisError
from .flat_folder import Wording, flat_files

MAX_BACKGROUNDS = 10_000
CACHE_BYTES = 1024 ** 3        # fitted float32 backgrounds kept in memory


@dataclass(frozen=True, eq=False)
class Background:
    name: str                      # file name, or "array[k]"
    sha256: str
    path: Path | None = None
    array: np.ndarray | None = None   # H x W x 3 float32 in [0, 1] when given as an array


class Backgrounds:
    """The backgrounds of a copy-paste stage; ``fitted(j, size)`` is background ``j`` as a read-only
    ``size x size x 3`` float32 array."""

    def __init__(self, entries, source: str, cache_bytes: int = CACHE_BYTES):
        self.entries = tuple(entries)
        self.source = source
        self._cache: OrderedDict = OrderedDict()
        self._cache_bytes, self._held = cache_bytes, 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def fitted(self, j: int, size: int) -> np.ndarray:
        with self._lock:
            found = self._cache.get((j, size))
            if found is not None:
                self._cache.move_to_end((j, size))
                return found
        entry = self.entries[j]
        if entry.array is not None:
            out = fit_array(entry.array, size)
        else:
            out = load_image(entry.path, size, "crop")
            out = np.ascontiguousarray(out, dtype=np.float32)
        out.setflags(write=False)
        with self._lock:
            self._cache[(j, size)] = out
            self._held += out.nbytes
            while self._held > self._cache_bytes and len(self._cache) > 1:
                self._held -= self._cache.popitem(last=False)[1].nbytes
        return out


def load_backgrounds(source, *, max_files: int = MAX_BACKGROUNDS, cache_bytes: int = CACHE_BYTES) -> Backgrounds:
    """Backgrounds from a folder (str or Path) or a sequence of arrays (H x W, H x W x 1 or
    H x W x 3; uint8, uint16 or float in [0, 1]). A folder is flat: its images sorted by name,
    hidden files and files that are not images ignored. Refused (``SynthesisError`` naming the
    folder, file or array): no background, a missing folder, a sub-folder, a symlink, a file that
    is not an image or is over 64 megapixels, more than ``max_files`` backgrounds."""
    if isinstance(max_files, bool) or not isinstance(max_files, int) or max_files < 1:
        raise SynthesisError(None, f"max_files must be a positive integer, got {max_files!r}")
    if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
        raise SynthesisError(None, f"cache_bytes must be an integer >= 0, got {cache_bytes!r}")
    if isinstance(source, (str, os.PathLike)):
        return Backgrounds(_scan(Path(source), max_files), str(source), cache_bytes)
    arrays = list(source)
    if not arrays:
        raise SynthesisError(None, "backgrounds: no array was given")
    if len(arrays) > max_files:
        raise SynthesisError(None, f"backgrounds: {len(arrays)} arrays; at most max_files={max_files}")
    return Backgrounds([_array_entry(k, a) for k, a in enumerate(arrays)], f"{len(arrays)} array(s)", cache_bytes)


_WORDING = Wording(
    missing="folder of backgrounds does not exist",
    folder_link="is a symlink; give the real folder of backgrounds",
    not_folder="is not a folder; backgrounds are read from a flat folder of images",
    entry_link="is a symlink; backgrounds are read only from real files",
    entry_folder="is a folder; backgrounds are read from one flat folder (move its images up, or point to it instead)",
    plural="backgrounds")


def _scan(folder: Path, max_files: int) -> list[Background]:
    out = []
    for path in flat_files(folder, IMAGE_SUFFIXES, max_files, _WORDING):
        _check_header(path)
        out.append(Background(path.name, file_digest(path), path))
    if not out:
        raise SynthesisError(folder, "folder holds no background image (" + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
    return out


def _check_header(path: Path) -> None:
    """Refuse a non-image or an oversized image now, before any item is made (pixels decode later)."""
    with pillow_errors(path, SynthesisError), open_regular(path) as f, Image.open(f) as im:
        w, h = im.size
    if w * h > MAX_PIXELS:
        raise SynthesisError(path, f"image is {w} x {h} = {w * h / 1e6:.1f} megapixels; at most "
                             f"{MAX_PIXELS / 1e6:.1f} are read")


def _array_entry(k: int, value) -> Background:
    name = f"array[{k}]"
    a = np.asarray(value)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)) or min(a.shape[:2], default=0) < 1:
        raise SynthesisError(None, f"backgrounds {name}: expected H x W or H x W x 3, got shape {a.shape}")
    if a.shape[0] * a.shape[1] > MAX_PIXELS:
        raise SynthesisError(None, f"backgrounds {name}: {a.shape[1]} x {a.shape[0]} is over {MAX_PIXELS / 1e6:.1f} MP")
    if a.dtype == np.uint8 or a.dtype == np.uint16:
        rgb = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise SynthesisError(None, f"backgrounds {name}: float values must be finite and in [0, 1]")
        rgb = a.astype(np.float32)
    else:
        raise SynthesisError(None, f"backgrounds {name}: dtype {a.dtype} is not uint8, uint16 or float")
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    digest = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    digest.update(np.ascontiguousarray(a).tobytes())
    rgb = np.ascontiguousarray(rgb)
    rgb.setflags(write=False)
    return Background(name, digest.hexdigest(), None, rgb)


def fit_array(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre crop + Lanczos resize of a float RGB array, per channel in float (no 8-bit rounding)."""
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise SynthesisError(None, f"size must be an integer in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
    h, w = rgb.shape[:2]
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., c], dtype=np.float32))
                         .resize((size, size), Image.Resampling.LANCZOS, box=box)) for c in range(3)]
    return np.ascontiguousarray(np.clip(np.stack(planes, axis=2), 0.0, 1.0), dtype=np.float32)
