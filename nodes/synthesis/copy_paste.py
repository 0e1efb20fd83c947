"""Copy-paste synthesis: item ``i`` = real cutouts of one class pasted on a real background, with
an instance map of what stays visible. A pure function of (cutout and background file contents,
parameters, seed, i), like the prompt sampler: O(1) per item, no precomputed list.

- **Stream.** ``stream`` = ``common.identity.stream_id`` of the sha256 of (every cutout's and
  background's sha256, the parameters) with mode ``copy_paste``, the seed and the classes. Paths
  and file names are not in it: the same folder moved elsewhere gives the same items.
- **Draws.** Item i draws from PCG64 seeded by blake2b(stream, i), through the bit generator's raw
  64-bit output, whose stream numpy keeps stable across versions (``Generator`` methods are not
  promised to be); never the global RNG, never Python's ``hash()``.
- **Class.** Items cycle through the classes: cycle ``i // n`` visits every class once in an
  order drawn from (stream, cycle), so any prefix is balanced to within one item per class. All
  objects of an item are of its class (a classification dataset with masks).
- **Placement.** Per object: a cutout of the class, scale (longer side = scale x size), rotation,
  flip, then a position that keeps the whole patch inside the image. With ``max_overlap`` 0 no two
  objects' mask boxes intersect; above 0 their IoU is at most ``max_overlap`` (a later object then
  occludes an earlier one). An object gets ``GEOMETRY_TRIES`` geometries x ``POSITION_TRIES``
  positions; one that does not fit is left out and named in ``metadata["not_placed"]``, so an item
  holds as many of its ``objects_requested`` as fit (``objects_placed``). The first object, on an
  empty image, falls back to the smallest scale without rotation; if even that fails the item is
  an error naming the cutout and the size.
- **Masks.** Instance ``k`` = the k-th visible object in paste order: its hard alpha (> 0.5) minus
  what later objects cover; an object with no visible pixel left is dropped and ids renumbered.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common.identity import stream_id
from ..common.instances import instances_of
from ..common.records import ScoredItem
from ..fewshot.pixels import MAX_SIZE, MIN_SIZE
from .backgrounds import Backgrounds, load_backgrounds
from .cutouts import Cutout, load_cutouts
from .draws import Draws
from .errors import SynthesisError
from .patches import Patch, Planes, jitter, paste, target_size, transform

SOURCE = "copy_paste"
# Words of the node's canvas text (programs read its structured output, adapters/copy_paste._status).
DONE_TEXT = "copy-paste images: done"     # every class has its quota: nothing was made
MADE_TEXT = "copy-paste item(s)"          # "<n> copy-paste item(s): ..."
FORMAT = "copy_paste/1"        # part of the stream: bump when the same inputs would give other pixels
BLENDS = ("none", "gaussian")
MAX_OBJECTS = 50
MIN_OBJECT_PX = 4              # the smallest longer side of a pasted object
MAX_SIGMA = 20.0
GEOMETRY_TRIES, POSITION_TRIES = 4, 25


@dataclass
class PastedItem:
    index: int
    label: str
    image: np.ndarray                  # size x size x 3 float32 in [0, 1]
    instance_map: np.ndarray           # size x size uint16, 0 = background, k = instance k
    instance_labels: tuple             # all equal to ``label``
    boxes: list = field(default_factory=list)     # common.instances.Instance, tight
    metadata: dict = field(default_factory=dict)  # JSON-serialisable

    def to_scored(self, prompt: str = "") -> ScoredItem:
        """As a dataset item (unfiltered; the CLIP filter may still score it)."""
        return ScoredItem(image=self.image, label=self.label, prompt=prompt, index=self.index,
                          metadata=dict(self.metadata), instance_map=self.instance_map,
                          instance_labels=self.instance_labels)


def _number(name: str, value, lo: float, hi: float, integer: bool = False):
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not lo <= value <= hi:  # NaN fails too
        what = "an integer" if integer else "a number"
        raise SynthesisError(None, f"{name} must be {what} in {lo}..{hi}, got {value!r}")
    return value if integer else float(value)


def _pair(name: str, value, lo: float, hi: float, integer: bool = False) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise SynthesisError(None, f"{name} must be a (low, high) pair, got {value!r}")
    a, b = (_number(name, v, lo, hi, integer) for v in value)
    if a > b:
        raise SynthesisError(None, f"{name} low must not exceed high, got {tuple(value)!r}")
    return a, b


def _iou_ok(box: tuple, others: list, max_overlap: float) -> bool:
    x, y, w, h = box
    for ox, oy, ow, oh in others:
        iw = min(x + w, ox + ow) - max(x, ox)
        ih = min(y + h, oy + oh) - max(y, oy)
        if iw <= 0 or ih <= 0:
            continue
        if max_overlap == 0:
            return False
        inter = iw * ih
        if inter / (w * h + ow * oh - inter) > max_overlap:
            return False
    return True


class CopyPaste:
    """Deterministic copy-paste items; ``item(i)`` is pure. ``cutouts``: ``load_cutouts``'s dict or
    its folder; ``backgrounds``: a ``Backgrounds``, a folder or a sequence of arrays."""

    def __init__(self, cutouts, backgrounds, size: int = 512, *, objects=(1, 3), scale=(0.25, 0.6),
                 rotation: float = 15.0, flip: bool = True, max_overlap: float = 0.0, jitter: float = 0.0,
                 blend: str = "none", sigma: float = 1.5, seed: int = 0, classes=None):
        self.size = _number("size", size, MIN_SIZE, MAX_SIZE, integer=True)
        self.objects = _pair("objects", objects, 1, MAX_OBJECTS, integer=True)
        self.scale = _pair("scale", scale, 0.0, 1.0)
        if self.scale[0] * self.size < MIN_OBJECT_PX:
            raise SynthesisError(None, f"scale low {self.scale[0]} x size {self.size} is under {MIN_OBJECT_PX} px; "
                                 "raise scale or size")
        self.rotation = _number("rotation", rotation, 0.0, 180.0)
        if not isinstance(flip, bool):
            raise SynthesisError(None, f"flip must be true or false, got {flip!r}")
        self.flip = flip
        self.max_overlap = _number("max_overlap", max_overlap, 0.0, 1.0)
        self.jitter = _number("jitter", jitter, 0.0, 1.0)
        if blend not in BLENDS:
            raise SynthesisError(None, f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
        self.blend = blend
        self.sigma = _number("sigma", sigma, 0.1, MAX_SIGMA)
        self.seed = _number("seed", seed, 0, 2 ** 64 - 1, integer=True)

        if isinstance(cutouts, (str, Path)):
            cutouts = load_cutouts(cutouts)
        if not isinstance(backgrounds, Backgrounds):
            backgrounds = load_backgrounds(backgrounds)
        self.backgrounds = backgrounds
        self.cutouts = self._chosen(cutouts, classes)
        self.labels = tuple(self.cutouts)
        self._planes = {id(c): Planes.of(c) for pool in self.cutouts.values() for c in pool}
        self._min_longer = max(MIN_OBJECT_PX, round(self.scale[0] * self.size))
        for pool in self.cutouts.values():
            for c in pool:
                if transform(self._planes[id(c)], self._min_longer, 0.0, False) is None:
                    raise SynthesisError(c.path, f"keeps no pixel more than half opaque at the smallest scale "
                                         f"({self._min_longer} px longer side in a {self.size} x {self.size} image); "
                                         "raise scale or size, or use a larger cutout")
        self.stream = stream_id(self._content_hash(), SOURCE, self.seed, self.labels)

    @staticmethod
    def _chosen(cutouts: Mapping, classes) -> dict:
        if not isinstance(cutouts, Mapping) or not cutouts:
            raise SynthesisError(None, "cutouts: no class was given (expected {label: [Cutout, ...]})")
        for label, pool in cutouts.items():
            if not pool or not all(isinstance(c, Cutout) for c in pool):
                raise SynthesisError(None, f"cutouts: class {label!r} must hold at least one Cutout")
        wanted = [classes] if isinstance(classes, str) else list(classes or [])
        unknown = [c for c in wanted if c not in cutouts]
        if unknown:
            raise SynthesisError(None, f"classes: unknown class {unknown[0]!r}; the cutouts have "
                                 f"{', '.join(sorted(cutouts))}")
        return {label: list(cutouts[label]) for label in sorted(cutouts) if not wanted or label in wanted}

    def _content_hash(self) -> str:
        content = {
            "format": FORMAT,
            "cutouts": {label: [c.sha256 for c in pool] for label, pool in self.cutouts.items()},
            "backgrounds": [b.sha256 for b in self.backgrounds.entries],
            "params": {"size": self.size, "objects": list(self.objects), "scale": list(self.scale),
                       "rotation": self.rotation, "flip": self.flip, "max_overlap": self.max_overlap,
                       "jitter": self.jitter, "blend": self.blend, "sigma": self.sigma},
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def _check_index(self, i) -> int:
        if i.__class__ is not int:
            if isinstance(i, bool) or not hasattr(i, "__index__"):
                raise SynthesisError(None, f"item index must be an integer >= 0, got {i!r}")
            i = i.__index__()
        if not 0 <= i < 2 ** 63:
            raise SynthesisError(None, f"item index must be an integer in 0..2**63-1, got {i!r}")
        return i

    def label_of(self, i: int) -> str:
        """The class of item i: balanced cycles, each in its own seeded order."""
        cycle, pos = divmod(self._check_index(i), len(self.labels))
        key = f"{self.stream}:{cycle}:".encode()
        order = sorted(self.labels, key=lambda label: hashlib.blake2b(
            key + label.encode(), digest_size=8, person=b"dtgen.order").digest())
        return order[pos]

    def items(self, start: int, count: int) -> list:
        return [self.item(i) for i in range(start, start + count)]

    def item(self, i: int) -> PastedItem:
        i = self._check_index(i)
        label = self.label_of(i)
        pool = self.cutouts[label]
        draws = Draws(f"{self.stream}:{i}", b"dtgen.paste")
        bg_index = draws.below(len(self.backgrounds))
        lo, hi = self.objects
        requested = lo + draws.below(hi - lo + 1)
        image = np.array(self.backgrounds.fitted(bg_index, self.size), dtype=np.float32, copy=True)
        imap = np.zeros((self.size, self.size), dtype=np.uint16)
        boxes, placements, not_placed = [], [], []
        sigma = self.sigma if self.blend == "gaussian" else None
        where = f"copy_paste item {i}"
        for _ in range(requested):
            cutout = pool[draws.below(len(pool))]
            found = self._place(cutout, draws, boxes)
            if found is None and not boxes:
                found = self._fallback(cutout, draws)
            if found is None:
                not_placed.append(cutout.name)
                continue
            patch, x, y, params = found
            if self.jitter:
                j = self.jitter
                factors = [draws.uniform(1 - j, 1 + j) for _ in range(3)]
                patch = jitter(patch, *factors)
                params["jitter"] = dict(zip(("brightness", "contrast", "saturation"), factors))
            paste(image, patch, x, y, sigma)
            h, w = patch.shape
            imap[y:y + h, x:x + w][patch.hard] = len(placements) + 1
            bx, by, bw, bh = patch.box
            boxes.append((x + bx, y + by, bw, bh))
            placements.append(params)
        np.clip(image, 0.0, 1.0, out=image)
        counts = np.bincount(imap.ravel(), minlength=len(placements) + 1)
        lut = np.zeros(len(placements) + 1, dtype=np.uint16)
        visible = 0
        for k, params in enumerate(placements, start=1):
            if counts[k]:
                visible += 1
                lut[k] = visible
            params["instance"] = int(lut[k])      # 0 = fully occluded, dropped
        if visible < len(placements):
            imap = lut[imap]
        labels = (label,) * visible
        bg = self.backgrounds.entries[bg_index]
        meta = {
            "source": SOURCE, "stream": self.stream, "index": i, "item_id": f"{SOURCE}:{self.stream}:{i}",
            "base_seed": self.seed, "label": label, "size": self.size,
            "background": bg.name, "background_sha256": bg.sha256,
            "cutouts": [p["cutout"] for p in placements], "placements": placements,
            "objects_requested": requested, "objects_placed": len(placements), "instances": visible,
            "not_placed": not_placed, "blend": self.blend, "sigma": self.sigma if sigma else None,
        }
        return PastedItem(i, label, image, imap, labels, instances_of(imap, labels, where), meta)

    def _place(self, cutout: Cutout, draws: Draws, boxes: list):
        """(patch, x, y, params) of a random placement that fits, or None after the tries."""
        planes = self._planes[id(cutout)]
        lo, hi = self.scale
        for _ in range(GEOMETRY_TRIES):
            scale = draws.uniform(lo, hi)
            angle = draws.uniform(-self.rotation, self.rotation) if self.rotation else 0.0
            flip = self.flip and draws.uniform() < 0.5
            longer = max(MIN_OBJECT_PX, round(scale * self.size))
            patch = transform(planes, longer, angle, flip)
            if patch is None:
                continue
            found = self._position(patch, draws, boxes)
            if found is not None:
                return patch, *found, self._params(cutout, planes, scale, longer, angle, flip, patch, *found)
        return None

    def _fallback(self, cutout: Cutout, draws: Draws):
        planes = self._planes[id(cutout)]
        patch = transform(planes, self._min_longer, 0.0, False)
        found = None if patch is None else self._position(patch, draws, [])
        if found is None:
            raise SynthesisError(cutout.path, f"does not fit even once in a {self.size} x {self.size} image at the "
                                 f"smallest scale {self.scale[0]} ({self._min_longer} px longer side)")
        params = self._params(cutout, planes, self.scale[0], self._min_longer, 0.0, False, patch, *found)
        params["fallback"] = "smallest scale, no rotation"
        return patch, *found, params

    def _position(self, patch: Patch, draws: Draws, boxes: list):
        h, w = patch.shape
        if h > self.size or w > self.size:
            return None
        bx, by, bw, bh = patch.box
        for _ in range(POSITION_TRIES):
            x, y = draws.below(self.size - w + 1), draws.below(self.size - h + 1)
            if _iou_ok((x + bx, y + by, bw, bh), boxes, self.max_overlap):
                return x, y
        return None

    @staticmethod
    def _params(cutout, planes, scale, longer, angle, flip, patch, x, y) -> dict:
        h, w = patch.shape
        bx, by, bw, bh = patch.box
        return {"cutout": cutout.name, "cutout_sha256": cutout.sha256, "scale": scale, "longer_side": longer,
                "resized": list(target_size(planes.size, longer)), "angle": angle, "flip": flip,
                "x": x, "y": y, "patch": [w, h], "box": [x + bx, y + by, bw, bh]}


def summary(items: list, shown: int = 5) -> str:
    """The copy-paste node's text: items and objects per class, then the first few items."""
    requested = sum(it.metadata["objects_requested"] for it in items)
    placed = sum(it.metadata["objects_placed"] for it in items)
    visible = sum(len(it.instance_labels) for it in items)
    head = f"{len(items)} {MADE_TEXT}: {placed} object(s) placed of {requested} requested, {visible} visible"
    lines = [head]
    per_item, per_object = Counter(), Counter()
    for it in items:
        per_item[it.label] += 1
        per_object[it.label] += it.metadata["objects_placed"]
    lines += [f"{label}: {n} item(s), {per_object[label]} object(s)" for label, n in sorted(per_item.items())]
    for it in items[:shown]:
        m = it.metadata
        short = f", {m['objects_requested'] - m['objects_placed']} did not fit" if m["not_placed"] else ""
        lines.append(f"#{it.index} {it.label}: {m['objects_placed']} object(s) on {m['background']}{short}")
    if len(items) > shown:
        lines.append(f"... and {len(items) - shown} more")
    return "\n".join(lines)
