"""Real cutouts per class, from an ImageFolder ``<root>/<label>/``.

A cutout is either an image with transparency (its alpha is the mask, soft edges kept) or an
RGB/grayscale image with a sibling mask ``<stem>_mask.png`` (grayscale, > 127 = object; a mask
file wins over the image's own alpha and is never a cutout itself). Each cutout is cropped to the
bounding box of its non-zero alpha, so its longer side is the object's longer side.

The folder is scanned by ``fewshot.imageset.scan`` (symlinks, bad labels, nested folders and
``max_files`` refused there). Each file is read once into memory: its sha256 (the cutout's identity
in a copy-paste stream, so a moved folder gives the same items) and its pixels come from the same
bytes. Grayscale, 16-bit, palette and CMYK files are converted to RGB; EXIF orientation is applied
to images and masks alike.
"""
from __future__ import annotations

import hashlib
import io
import errno
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..common.files import NotReadable, open_regular
from ..fewshot.imageset import scan
from ..fewshot.pixels import MAX_PIXELS, pillow_errors
from ..fewshot.realset import MAX_FILE_BYTES
from .errors import SynthesisError

MASK_TAG = "_mask"                 # <stem>_mask.png is the mask of <stem>.<any image suffix>
MAX_FILES = 1_000                  # files (cutouts and masks) per set
MAX_CUTOUT_PIXELS = 4096 * 4096    # per cutout file, checked from the header before decoding
MAX_CUTOUT_BYTES = 2 * 1024 ** 3   # float32 rgb + alpha of every cropped cutout together


@dataclass(frozen=True, eq=False)
class Cutout:
    """One object: ``rgb`` (h x w x 3) and ``alpha`` (h x w), float32 in [0, 1], cropped to the
    alpha's bounding box. ``sha256`` hashes the image file's bytes, then the mask file's."""

    label: str
    path: Path
    mask_path: Path | None
    rgb: np.ndarray
    alpha: np.ndarray
    sha256: str

    @property
    def name(self) -> str:
        return f"{self.label}/{self.path.name}"


def is_mask_name(name: str) -> bool:
    stem, suffix = os.path.splitext(name)
    return suffix.lower() == ".png" and stem.endswith(MASK_TAG)


def load_cutouts(root, *, max_files: int = MAX_FILES, max_pixels: int = MAX_CUTOUT_PIXELS,
                 max_bytes: int = MAX_CUTOUT_BYTES) -> dict[str, list[Cutout]]:
    """``{label: [Cutout, ...]}`` in (label, file name) order.

    Refused (``SynthesisError`` naming the file): an image without transparency (or whose alpha is
    opaque everywhere) and without a mask file; a mask whose size differs from its image; an empty
    mask (no pixel more than half opaque); a mask without its image, or one that two images share;
    a class folder without a cutout; a damaged file; a file over ``max_pixels`` or 256 MiB; more
    than ``max_bytes`` of cutout pixels in all. ``scan`` refuses the rest (symlinks, ...).
    """
    for name, value, top in (("max_pixels", max_pixels, MAX_PIXELS), ("max_bytes", max_bytes, 1 << 40)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise SynthesisError(None, f"{name} must be an integer in 1..{top}, got {value!r}")
    found = scan(root, max_files=max_files)
    by_folder: dict[Path, list[Path]] = {}
    for image in found:
        by_folder.setdefault(image.path.parent, []).append(image.path)
    out: dict[str, list[Cutout]] = {}
    total = 0
    for folder, paths in by_folder.items():
        label = folder.name
        images = [p for p in paths if not is_mask_name(p.name)]
        masks = {p.stem[:-len(MASK_TAG)]: p for p in paths if is_mask_name(p.name)}
        stems = [p.stem for p in images]
        if not images:
            raise SynthesisError(folder, "class folder holds no cutout (only mask files); add an image with "
                                 f"transparency, or an image with a {MASK_TAG}.png beside it")
        for stem, mask in masks.items():
            owners = stems.count(stem)
            if owners != 1:
                problem = ("has no image beside it" if not owners else f"would belong to {owners} images")
                raise SynthesisError(mask, f"mask file {problem} (expected exactly one {stem}.<png|jpg|...> in "
                                     f"{folder}); rename or remove it")
        for path in images:
            cutout = _load_one(label, path, masks.get(path.stem), max_pixels)
            total += cutout.alpha.size * 16
            if total > max_bytes:
                raise SynthesisError(path, f"the cutouts up to this one need {total:,} bytes as float32; "
                                     f"at most max_bytes={max_bytes:,} are loaded: use fewer or smaller cutouts")
            out.setdefault(label, []).append(cutout)
    return dict(sorted(out.items()))


def _load_one(label: str, path: Path, mask_path: Path | None, max_pixels: int) -> Cutout:
    data = _read(path)
    digest = hashlib.sha256(data)
    im = _decode(path, data, max_pixels)
    if mask_path is None:
        rgb, alpha = _planes(path, im, keep_alpha=True)
        if alpha is None:
            raise SynthesisError(path, f"has no transparency and no mask file {path.stem}{MASK_TAG}.png beside it; "
                                 "save it with an alpha channel or add a mask (grayscale, > 127 = object)")
        if alpha.min() >= 1.0:
            raise SynthesisError(path, "has an alpha channel but every pixel is opaque, and no mask file "
                                 f"{path.stem}{MASK_TAG}.png beside it: the cutout would be its whole rectangle")
        where = path
    else:
        mask_data = _read(mask_path)
        digest.update(mask_data)
        rgb, _ = _planes(path, im, keep_alpha=False)
        mask_im = _decode(mask_path, mask_data, max_pixels)
        if mask_im.size != im.size:
            raise SynthesisError(mask_path, f"mask is {mask_im.size[0]} x {mask_im.size[1]} but its image {path.name} "
                                 f"is {im.size[0]} x {im.size[1]}; they must be the same size")
        alpha = _mask(mask_im).astype(np.float32)
        where = mask_path
    if not (alpha > 0.5).any():
        raise SynthesisError(where, "mask is empty: no pixel is more than half opaque (> 127 of 255)")
    ys, xs = np.nonzero(alpha > 0)
    box = np.s_[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    rgb, alpha = np.ascontiguousarray(rgb[box]), np.ascontiguousarray(alpha[box])
    rgb.setflags(write=False)
    alpha.setflags(write=False)
    return Cutout(label, path, mask_path, rgb, alpha, digest.hexdigest())


def _read(path: Path) -> bytes:
    """The file's bytes, never through a symlink, at most 256 MiB."""
    try:
        f = open_regular(path)
    except NotReadable as e:
        if e.errno == errno.ELOOP:
            raise SynthesisError(path, "is a symlink; cutouts are read only from real files") from None
        raise SynthesisError(path, e.strerror) from None
    except OSError as e:
        raise SynthesisError(path, f"cannot be read ({e.strerror or e})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_FILE_BYTES:
            raise SynthesisError(path, f"file is {size / 1024 ** 2:.0f} MiB; files above "
                                 f"{MAX_FILE_BYTES / 1024 ** 2:.0f} MiB are not read")
        return f.read()


def _decode(path: Path, data: bytes, max_pixels: int) -> Image.Image:
    with pillow_errors(path, SynthesisError):
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > max_pixels:
            raise SynthesisError(path, f"image is {w} x {h} = {w * h / 1e6:.1f} megapixels; at most "
                                 f"max_pixels={max_pixels} ({max_pixels / 1e6:.1f} MP) are read per cutout")
        im.load()
        return ImageOps.exif_transpose(im)


def _planes(path: Path, im: Image.Image, keep_alpha: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(rgb, alpha or None) as float32 in [0, 1]; 16-bit grayscale is scaled by 65535."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        scale = 1.0 if im.mode == "F" else 65535.0
        gray = np.clip(np.asarray(im, dtype=np.float32) / scale, 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2), None
    if keep_alpha and im.has_transparency_data:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        return rgba[..., :3], rgba[..., 3]
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0, None   # L, 1, P, CMYK, YCbCr ...


def _mask(im: Image.Image) -> np.ndarray:
    """Object pixels of a mask file: gray > 127 of 255 (16-bit: > 127/255 of 65535; colour is
    converted to gray, a mask's own alpha ignored)."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        scale = 1.0 if im.mode == "F" else 65535.0
        return np.asarray(im, dtype=np.float64) / scale > 127 / 255
    return np.asarray(im.convert("L")) > 127
