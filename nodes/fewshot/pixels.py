"""One real image file -> a float32 ``size x size x 3`` array in [0, 1] (RGB), aspect-aware."""
from __future__ import annotations

import os
import struct
import warnings
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps

from ..common.files import NotReadable, open_regular
from .imageset import FewShotError

MIN_SIZE, MAX_SIZE = 64, 4096
MAX_PIXELS = 8192 * 8192          # 64 megapixels: refused before decoding
FITS = ("crop", "pad")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError)


@contextmanager
def pillow_errors(path, error=FewShotError):
    """Decoding inside: Pillow's failures become ``error(path, problem)`` in one wording (the
    decompression-bomb warning is silenced: callers refuse large images themselves, and Pillow's
    own bomb error stays on). A ``FewShotError`` raised inside passes through."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except FewShotError:
        raise
    except NotReadable as e:   # a FIFO, socket or device: never opened for a blocking read
        raise error(path, e.strerror) from None
    except Image.UnidentifiedImageError:
        raise error(path, "is not an image file Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise error(path, f"image is too large to decode safely ({e})") from None
    except FileNotFoundError:
        raise error(path, "image file does not exist") from None
    except _DECODE_ERRORS as e:
        raise error(path, f"image cannot be decoded (truncated or damaged?): {e}") from None


def load_image(path, size: int, fit: str = "crop") -> np.ndarray:
    """Decode ``path`` (EXIF orientation applied, transparency composited on white, 16-bit scaled
    by 65535) and fit it to ``size x size``: ``crop`` scales the shorter side to ``size`` and keeps
    the centre; ``pad`` scales the longer side to ``size`` and pads with black.

    Refused (``FewShotError`` naming the file): a symlink, not an image, a truncated or damaged
    file, more than 64 megapixels (Pillow's decompression-bomb check stays on too), a ``size``
    outside 64..4096 or an unknown ``fit``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise FewShotError(path, f"size must be an integer in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
    if fit not in FITS:
        raise FewShotError(path, f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    if os.path.islink(path):
        raise FewShotError(path, "is a symlink; real images are read only from real files")
    with pillow_errors(path), open_regular(path) as f, Image.open(f) as im:
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise FewShotError(path, f"image is {w} x {h} = {w * h / 1e6:.1f} megapixels; at most "
                               f"{MAX_PIXELS / 1e6:.1f} (8192 x 8192) are read")
        im.load()
        im = _normalise(ImageOps.exif_transpose(im))
    return _fit(im, size, fit)


def _normalise(im: Image.Image) -> Image.Image:
    """An 8-bit ``RGB`` image, or for 16/32-bit grayscale an ``F`` image scaled to [0, 1]."""
    if im.mode.startswith("I;16") or im.mode == "I":
        values = np.asarray(im).astype(np.float32)   # I;16: 0..65535; I (16-bit PNG in older Pillow)
        return Image.fromarray(np.clip(values / 65535.0, 0.0, 1.0), mode="F")
    if im.mode == "F":
        return Image.fromarray(np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0), mode="F")
    if im.has_transparency_data:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")   # L, 1, P, CMYK, YCbCr, LAB, HSV ...


def _fit(im: Image.Image, size: int, fit: str) -> np.ndarray:
    w, h = im.size
    if fit == "crop":
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        out = im.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    else:
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        out = Image.new(im.mode, (size, size))  # black
        out.paste(im.resize((nw, nh), Image.Resampling.LANCZOS, reducing_gap=3.0),
                  ((size - nw) // 2, (size - nh) // 2))
    arr = np.asarray(out, dtype=np.float32)
    if out.mode == "F":
        return np.ascontiguousarray(np.repeat(np.clip(arr, 0.0, 1.0)[..., None], 3, axis=2))
    return np.ascontiguousarray(arr / 255.0)
