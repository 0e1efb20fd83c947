"""Defect masks for mask-conditioned inpainting (issue #17, after DefFiller, "Mask-Conditioned
Diffusion for Salient Steel Surface Defect Generation"): where in a clean surface image SD
inpainting should draw a defect of a class.

DefFiller's guidelines behind the choices here: a sample is kept only when the mask predicted on
the generated image overlaps the conditioning mask with IoU >= 0.6 (``curation.mask_iou``); a
guidance scale of 2-4; at most ~100 real samples per class suffice; defects under 10 px wide are
not drawn reliably and need targeted masks. Hence ``min_width`` (10 px by default): no part of a
mask is thinner than it, and a scratch or crack drawn thinner is widened to it (recorded as
``widened`` in the metadata) rather than left for the generator to miss.

- **Width guarantee.** Every mask is the dilation of a non-empty core by ``D``, the digital disk
  of diameter ``min_width``; a dilation by ``D`` is open under ``D``, so each pixel lies in a copy
  of ``D`` inside the mask. Each connected component therefore survives an erosion by
  ``(min_width - 1) // 2`` px, and the mask is never empty. It is drawn in a square canvas no
  larger than the image's shorter side and pasted whole: it always fits inside the image.
- **Shapes.** ``scratch`` (a polyline of 1-3 segments), ``blob`` (a smooth radial function),
  ``patch`` (a union of 2-4 blobs), ``crack`` (a branching random walk), ``pits`` (3-10 small blobs
  at least ``min_width`` across). The default shape of a label comes from its name
  (``default_shape``); ``shapes`` ("label: shape" per line, or a dict) overrides it.
- **Real masks.** ``real_masks`` (a flat folder of PNG masks, > 127 = defect, or {label: folder})
  gives a label masks made from real ones instead: randomly chosen, rotated, scaled to the canvas
  and elastically deformed (a smooth displacement field); parts thinner than ``min_width`` are
  widened to it, wider parts keep their outline (morphological opening).
- **Determinism.** Mask (i, label) is a pure function of (parameters, real mask file contents,
  seed, i, label): draws come from PCG64 seeded by blake2b(stream, label, i) through the raw 64-bit
  output (as ``copy_paste``); ``stream`` is ``common.identity.stream_id`` of their sha256. Shapes
  use float trigonometry, so masks are bit-identical across processes on one numpy build; another
  CPU or numpy may flip a boundary pixel.
- **Cost.** Erosion and dilation by ``D`` are numpy shifts of row spans (a cumulative sum per
  row of the disk), on the defect's canvas only: a few ms per mask at 512 px.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..common.files import read_regular
from ..common.identity import stream_id
from ..common.morphology import dilate, disk_rows, erode
from ..fewshot.pixels import MAX_SIZE, MIN_SIZE
from ..fewshot.realset import MAX_FILE_BYTES
from .draws import Draws
from .errors import SynthesisError
from .flat_folder import Wording, flat_files

SOURCE = "defect_masks"
FORMAT = "defect_masks/1"      # part of the stream: bump when the same inputs would give other masks
SHAPES = ("scratch", "blob", "patch", "crack", "pits")
MIN_WIDTH = 10                 # DefFiller: defects under 10 px wide need targeted masks
MAX_REAL_MASKS = 1_000         # per folder (DefFiller uses <= 100 real samples per class)
MAX_MASK_PIXELS = 4096 * 4096
_NAME_RULES = ((("crack", "crazing"), "crack"), (("scratch",), "scratch"), (("inclusion", "spot"), "blob"),
               (("patch",), "patch"), (("pit",), "pits"), (("scale",), "patch"))


def default_shape(label: str) -> str:
    """The shape a label gets from its name: crack/crazing -> crack, scratch -> scratch,
    inclusion/spot -> blob, patch -> patch, pit -> pits, scale -> patch, else blob (first rule wins)."""
    name = str(label).lower()
    return next((shape for keys, shape in _NAME_RULES if any(k in name for k in keys)), "blob")


def parse_shapes(shapes) -> dict[str, str]:
    """``{label: shape}`` from a dict or from text, one "label: shape" per line (blank lines and
    ``#`` comments skipped). Refused, naming the line: no colon, an empty label, an unknown shape,
    a label given twice."""
    if shapes is None:
        return {}
    if isinstance(shapes, Mapping):
        lines = [(f"shapes[{k!r}]", k, v) for k, v in shapes.items()]
    elif isinstance(shapes, str):
        lines = []
        for n, raw in enumerate(shapes.splitlines(), start=1):
            text = raw.split("#", 1)[0].strip()
            if not text:
                continue
            at = f"shapes line {n} ({raw.strip()!r})"
            if ":" not in text:
                raise SynthesisError(None, f"{at}: expected 'label: shape'")
            label, shape = (part.strip() for part in text.split(":", 1))
            lines.append((at, label, shape))
    else:
        raise SynthesisError(None, f"shapes must be text or a dict, got {type(shapes).__name__}")
    out: dict[str, str] = {}
    for at, label, shape in lines:
        if not isinstance(label, str) or not label.strip():
            raise SynthesisError(None, f"{at}: the label is empty")
        if shape not in SHAPES:
            raise SynthesisError(None, f"{at}: unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
        if label in out:
            raise SynthesisError(None, f"{at}: label {label!r} is given twice")
        out[label] = shape
    return out


@dataclass(frozen=True, eq=False)
class RealMask:
    name: str
    sha256: str                    # of the file's bytes: its identity in the stream
    mask: np.ndarray               # bool, cropped to the defect's bounding box


_MASK_WORDING = Wording(
    missing="folder of real masks does not exist",
    folder_link="is not a real folder; give the folder of mask PNGs itself",
    not_folder="is not a real folder; give the folder of mask PNGs itself",
    entry_link="is a symlink or folder; real masks are read from one flat folder of PNG files",
    entry_folder="is a symlink or folder; real masks are read from one flat folder of PNG files",
    plural="masks")


def load_real_masks(folder, max_files: int = MAX_REAL_MASKS) -> list[RealMask]:
    """The PNG masks of a flat folder, in name order (other files and dot-files are skipped).
    Refused (``SynthesisError`` naming the file or folder): a missing folder, a symlink, a
    subfolder, no PNG at all, more than ``max_files``, an unreadable or oversized file, a mask with
    no defect pixel, a mask that is defect everywhere."""
    folder = Path(folder)
    out = [_read_mask(path) for path in flat_files(folder, {".png"}, max_files, _MASK_WORDING)]
    if not out:
        raise SynthesisError(folder, "folder holds no mask PNG (*.png, > 127 = defect)")
    return out


def _read_mask(path: Path) -> RealMask:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise SynthesisError(path, f"is over {MAX_FILE_BYTES // 1024 ** 2} MiB; not read")
    try:
        data = read_regular(path, MAX_FILE_BYTES)
    except OSError as e:
        raise SynthesisError(path, f"cannot be read ({e.strerror or e})") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_MASK_PIXELS:
                raise SynthesisError(path, f"mask is {im.width} x {im.height}; at most 4096 x 4096 pixels are read")
            im.load()
            if im.mode.startswith("I"):                     # 16-bit PNG: > half of 65535
                arr = np.asarray(im, dtype=np.int64) > 32767
            else:
                arr = np.asarray(im.convert("L")) > 127
    except SynthesisError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for damaged files
        raise SynthesisError(path, f"cannot be read as a PNG mask ({type(e).__name__}: {e})") from None
    if not arr.any():
        raise SynthesisError(path, "mask is empty (no value > 127); it cannot place a defect")
    if arr.all():
        raise SynthesisError(path, "mask is defect everywhere (every value > 127); a real mask needs background")
    ys, xs = np.nonzero(arr)
    crop = arr[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return RealMask(path.name, hashlib.sha256(data).hexdigest(), np.ascontiguousarray(crop))


# ---- the sampler ----------------------------------------------------------------------------

def _number(name, value, lo, hi, integer=False):
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not lo <= value <= hi:
        raise SynthesisError(None, f"{name} must be {'an integer' if integer else 'a number'} in {lo}..{hi}, "
                             f"got {value!r}")
    return value if integer else float(value)


def _pair(name, value, lo, hi, integer=False, ordered=True) -> tuple:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise SynthesisError(None, f"{name} must be a {'(low, high)' if ordered else '(width, height)'} pair, "
                             f"got {value!r}")
    a, b = (_number(name, v, lo, hi, integer) for v in value)
    if ordered and a > b:
        raise SynthesisError(None, f"{name} low must not exceed high, got {tuple(value)!r}")
    return a, b


class DefectMaskSampler:
    """``mask(i, label)`` -> (bool H x W mask, JSON-serialisable metadata); see the module docstring.

    size: the image, an int (square) or (width, height). scale: the side of the square canvas the
    defect is drawn in, as a fraction of the image's shorter side. line_width: the drawn width of
    scratches and cracks in px (default min_width..2 x min_width). rotation, elastic: for real
    masks, the largest rotation in degrees and the displacement field's amplitude as a fraction of
    the canvas.
    """

    def __init__(self, size, shapes=None, seed: int = 0, min_width: int = MIN_WIDTH, scale=(0.15, 0.5),
                 line_width=None, real_masks=None, rotation: float = 180.0, elastic: float = 0.05):
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            scale = (scale, scale)
        self.width, self.height = _pair("size", size, MIN_SIZE, MAX_SIZE, integer=True, ordered=False)
        self.shapes = parse_shapes(shapes)
        self.seed = _number("seed", seed, 0, 2 ** 64 - 1, integer=True)
        self.min_width = _number("min_width", min_width, 1, 256, integer=True)
        self.scale = _pair("scale", scale, 0.01, 1.0)
        self.line_width = _pair("line_width", line_width or (self.min_width, 2 * self.min_width), 1, 512)
        self.rotation = _number("rotation", rotation, 0.0, 180.0)
        self.elastic = _number("elastic", elastic, 0.0, 0.2)
        self.real = self._real(real_masks)
        self._disk = disk_rows(self.min_width)
        self._margin = math.ceil(max(self.min_width, self.line_width[1]) / 2) + 1   # around line centres
        side = min(self.width, self.height)
        smallest = self._extent(self.scale[0])
        room = smallest - 2 * self._margin
        if self.real:
            room = min(room, self._inner(smallest))
        if room < self.min_width:
            raise SynthesisError(None, f"scale low {self.scale[0]} x shorter side {side} px = {smallest} px leaves no "
                                 f"room for a defect {self.min_width} px wide with line_width up to "
                                 f"{self.line_width[1]} px and elastic {self.elastic}; raise scale")
        content = {"format": FORMAT, "size": [self.width, self.height], "shapes": self.shapes,
                   "min_width": self.min_width, "scale": list(self.scale), "line_width": list(self.line_width),
                   "rotation": self.rotation, "elastic": self.elastic,
                   "real": {k: [m.sha256 for m in pool] for k, pool in self.real.items()}}
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
        self.stream = stream_id(digest, SOURCE, self.seed, sorted(self.real))

    @staticmethod
    def _real(real_masks) -> dict:
        """{label: masks}, "*" = every label without its own folder."""
        if real_masks is None:
            return {}
        if isinstance(real_masks, Mapping):
            return {str(k): load_real_masks(v) for k, v in sorted(real_masks.items())}
        return {"*": load_real_masks(real_masks)}

    def _extent(self, scale: float) -> int:
        return max(1, min(round(scale * min(self.width, self.height)), self.width, self.height))

    def _inner(self, extent: int) -> int:
        """Room for a real mask: widened thin parts reach min_width / 2 out, the field ``elastic``."""
        return extent - 2 * (math.ceil(self.min_width / 2) + 1) - 2 * math.ceil(self.elastic * extent)

    def shape_of(self, label: str) -> str:
        """'real' when the label has real masks (they win), else its shape (override or default)."""
        if label in self.real or "*" in self.real:
            return "real"
        return self.shapes.get(label) or default_shape(label)

    def mask(self, i: int, label: str) -> tuple[np.ndarray, dict]:
        """Mask ``i`` of ``label``: the same (parameters, seed, i, label) give the same mask."""
        if isinstance(i, bool) or not hasattr(i, "__index__") or not 0 <= i.__index__() < 2 ** 63:
            raise SynthesisError(None, f"mask index must be an integer in 0..2**63-1, got {i!r}")
        i = i.__index__()
        if not isinstance(label, str) or not label.strip():
            raise SynthesisError(None, f"label must be a non-empty string, got {label!r}")
        draws = Draws(f"{self.stream}:{label}:{i}", b"dtgen.defmask")
        shape = self.shape_of(label)
        extent = self._extent(draws.uniform(*self.scale))
        meta = {"source": SOURCE, "format": FORMAT, "stream": self.stream, "index": i, "label": label,
                "shape": shape, "min_width": self.min_width, "extent": extent}
        core = _SHAPES[shape](self, draws, extent, meta)
        canvas = dilate(core, self._disk)
        ys, xs = np.nonzero(canvas)
        crop = canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        h, w = crop.shape
        x, y = draws.below(self.width - w + 1), draws.below(self.height - h + 1)
        out = np.zeros((self.height, self.width), bool)
        out[y:y + h, x:x + w] = crop
        meta.update(bbox=[int(x), int(y), int(w), int(h)], area=int(crop.sum()))
        return out, meta

    # each shape returns the core (bool extent x extent) that dilation by the disk turns into the mask

    def _blob(self, draws, extent, meta):
        c, r = (extent - 1) / 2, (extent - 3) / 2          # opening stays inside the region: 1 px margin
        return _erode_or_point(_radial(draws, extent, (c, c), r, draws.uniform(0.45, 1.0)), self._disk)

    def _patch(self, draws, extent, meta):
        c, big = (extent - 1) / 2, (extent - 3) / 2
        region = np.zeros((extent, extent), bool)
        meta["blobs"] = n = 2 + draws.below(3)
        for _ in range(n):
            r = big * draws.uniform(0.4, 0.7)
            centre = (c + draws.uniform(r - big, big - r), c + draws.uniform(r - big, big - r))
            region |= _radial(draws, extent, centre, r, draws.uniform(0.5, 1.0))
        return _erode_or_point(region, self._disk)

    def _pits(self, draws, extent, meta):
        inner, d = extent - 2, self.min_width
        core = np.zeros((extent, extent), bool)
        meta["pits"] = n = 3 + draws.below(8)
        for _ in range(n):
            p = draws.uniform(d, max(d, min(2.5 * d, inner / 3)))      # the pit's diameter
            lo, hi = 1 + p / 2, extent - 2 - p / 2
            cy, cx = (draws.uniform(lo, hi) if hi > lo else (extent - 1) / 2 for _ in range(2))
            core |= _radial(draws, extent, (cy, cx), (p - d) / 2, 1.0)
            core[round(cy), round(cx)] = True
        return core

    def _scratch(self, draws, extent, meta):
        angle, points = draws.uniform(0, 2 * math.pi), [(0.0, 0.0)]
        meta["segments"] = n = 1 + draws.below(3)
        for _ in range(n):
            step = draws.uniform(0.3, 1.0)
            points.append((points[-1][0] + step * math.sin(angle), points[-1][1] + step * math.cos(angle)))
            angle += draws.uniform(-0.35, 0.35)
        return self._line(draws, extent, [points], meta)

    def _crack(self, draws, extent, meta):
        paths, todo = [], [((0.0, 0.0), draws.uniform(0, 2 * math.pi), 10 + draws.below(15), 0)]
        while todo:
            (y, x), angle, steps, depth = todo.pop()
            path = [(y, x)]
            for _ in range(steps):
                angle += draws.uniform(-0.5, 0.5)
                y, x = y + math.sin(angle), x + math.cos(angle)
                path.append((y, x))
                if len(paths) + len(todo) < 6 and draws.uniform() < (0.2 if depth == 0 else 0.1):
                    turn = draws.uniform(0.5, 1.2) * (1 if draws.uniform() < 0.5 else -1)
                    todo.append(((y, x), angle + turn, 3 + draws.below(max(1, steps // 2)), depth + 1))
            paths.append(path)
        meta["branches"] = len(paths) - 1
        return self._line(draws, extent, paths, meta)

    def _line(self, draws, extent, paths, meta):
        """Fit the polylines into the canvas, draw them 1 px wide, thicken to the drawn width."""
        drawn = round(draws.uniform(*self.line_width))
        width = max(drawn, self.min_width)
        meta.update(width_drawn=drawn, width=width, widened=drawn < self.min_width)
        pts = np.array([p for path in paths for p in path])
        lo, span = pts.min(axis=0), pts.max(axis=0) - pts.min(axis=0)
        room = extent - 1 - 2 * self._margin
        k = room * draws.uniform(0.75, 1.0) / max(span.max(), 1e-9)
        offset = [self._margin + draws.uniform(0, room - s * k) for s in span]
        core = np.zeros((extent, extent), bool)
        for path in paths:
            p = (np.array(path) - lo) * k + offset
            for (y0, x0), (y1, x1) in itertools.pairwise(p):
                n = math.ceil(max(abs(y1 - y0), abs(x1 - x0))) + 1
                core[np.rint(np.linspace(y0, y1, n)).astype(int), np.rint(np.linspace(x0, x1, n)).astype(int)] = True
        return dilate(core, disk_rows(width - self.min_width + 1))

    def _real_shape(self, draws, extent, meta):
        pool = self.real.get(meta["label"]) or self.real["*"]
        real = pool[draws.below(len(pool))]
        angle = draws.uniform(-self.rotation, self.rotation)
        amp = self.elastic * extent
        meta.update(real_mask=real.name, real_sha256=real.sha256, angle=angle, elastic_px=amp)
        region = _transformed(real.mask, draws, extent, self._inner(extent), angle, amp)
        opened = dilate(erode(region, self._disk), self._disk)
        thin = region & ~dilate(opened, disk_rows(max(1, self.min_width // 2)))
        meta["widened"] = bool(thin.any())
        core = erode(region, self._disk) | thin
        if not core.any():
            core[extent // 2, extent // 2] = meta["collapsed"] = True
        return core


_SHAPES = {"blob": DefectMaskSampler._blob, "patch": DefectMaskSampler._patch, "pits": DefectMaskSampler._pits,
           "scratch": DefectMaskSampler._scratch, "crack": DefectMaskSampler._crack,
           "real": DefectMaskSampler._real_shape}


def _radial(draws, extent, centre, radius, aspect) -> np.ndarray:
    """A smooth blob: pixels within radius x f(theta) of the centre, f = 1 + harmonics 2..5
    normalised to max 1, squeezed to ``aspect`` across a random axis."""
    amps = [(draws.uniform(-0.3, 0.3) / k, draws.uniform(0, 2 * math.pi)) for k in range(2, 6)]
    turn = draws.uniform(0, math.pi)
    yy, xx = np.mgrid[0:extent, 0:extent].astype(np.float64)
    yy, xx = yy - centre[0], xx - centre[1]
    u = math.cos(turn) * xx + math.sin(turn) * yy
    v = (-math.sin(turn) * xx + math.cos(turn) * yy) / aspect
    theta = np.arctan2(v, u)
    f = 1.0 + sum(a * np.cos(k * theta + ph) for k, (a, ph) in enumerate(amps, start=2))
    top = 1.0 + sum(abs(a) for a, _ in amps)
    return np.hypot(u, v) <= radius * f / top


def _erode_or_point(region: np.ndarray, disk) -> np.ndarray:
    core = erode(region, disk)
    if not core.any():                       # too small for the disk: its centre pixel
        ys, xs = np.nonzero(region) if region.any() else ([region.shape[0] // 2], [region.shape[1] // 2])
        core[int(np.median(ys)), int(np.median(xs))] = True
    return core


def _transformed(mask: np.ndarray, draws, extent: int, inner: int, angle: float, amp: float) -> np.ndarray:
    """``mask`` rotated by ``angle`` degrees and scaled so its rotated box spans ``inner`` px, at
    the canvas centre, sampled through a smooth displacement field of at most ``amp`` px."""
    h, w = mask.shape
    a = math.radians(angle)
    s = inner / max(abs(w * math.cos(a)) + abs(h * math.sin(a)), abs(w * math.sin(a)) + abs(h * math.cos(a)))
    k = max(1, int(1 / s))                   # shrinking: keep thin lines by an any() block reduction first
    if k > 1:
        padded = np.zeros((-(-h // k) * k, -(-w // k) * k), bool)
        padded[:h, :w] = mask
        mask = padded.reshape(padded.shape[0] // k, k, padded.shape[1] // k, k).any(axis=(1, 3))
        s, h, w = s * k, mask.shape[0], mask.shape[1]
    yy, xx = np.mgrid[0:extent, 0:extent].astype(np.float64) - (extent - 1) / 2
    for grid in (yy, xx):                    # displacement: three random long-wave sinusoids per axis
        modes = [(draws.uniform(-1, 1), draws.uniform(0, 2 * math.pi), draws.uniform(0, 2 * math.pi),
                  draws.uniform(0.5, 1.0) * extent) for _ in range(3)]
        field = sum(c * np.sin(2 * math.pi * (math.cos(b) * xx + math.sin(b) * yy) / lam + ph)
                    for c, b, ph, lam in modes)
        grid += field * (amp / max(sum(abs(m[0]) for m in modes), 1e-9))
    sy = (-math.sin(a) * xx + math.cos(a) * yy) / s + (h - 1) / 2
    sx = (math.cos(a) * xx + math.sin(a) * yy) / s + (w - 1) / 2
    src = np.zeros((h + 2, w + 2))
    src[1:-1, 1:-1] = mask
    y0, x0 = np.floor(sy), np.floor(sx)
    fy, fx = sy - y0, sx - x0
    y0, x0 = y0.astype(np.int64) + 1, x0.astype(np.int64) + 1      # + 1: the zero border
    y0, y1 = np.clip(y0, 0, h + 1), np.clip(y0 + 1, 0, h + 1)
    x0, x1 = np.clip(x0, 0, w + 1), np.clip(x0 + 1, 0, w + 1)
    value = ((1 - fy) * ((1 - fx) * src[y0, x0] + fx * src[y0, x1]) + fy * ((1 - fx) * src[y1, x0] + fx * src[y1, x1]))
    return value > 0.5
