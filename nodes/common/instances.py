"""Object instances of one image: an instance map (``H x W`` uint16, 0 = background, ``k`` =
instance ``k``) with one label per instance. The one place boxes and areas come from, so a box is
always tight around its mask.

Copy-paste synthesis makes them, the dataset writer stores them (one PNG per image), Finalize
exports them (COCO, YOLO).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .naming import public_error

MAX_INSTANCES = 255   # one 8-bit indexed PNG per image


@public_error
class InstanceError(ValueError):
    """Instance masks that cannot be stored: ``where`` names the item."""


@dataclass(frozen=True)
class Instance:
    id: int                 # value in the instance map
    label: str
    bbox: tuple             # (x, y, w, h) in pixels, tight around the mask
    area: int               # mask pixels


def instances_of(instance_map: np.ndarray, labels, where: str = "item") -> list[Instance]:
    """The instances of a map (ids 1..n, each present), with tight boxes. Refused: a map that is not
    2-D integer, an id without a label, a label without pixels, more than ``MAX_INSTANCES``."""
    m = np.asarray(instance_map)
    labels = list(labels)
    if m.ndim != 2 or not np.issubdtype(m.dtype, np.integer):
        raise InstanceError(f"{where}: instance map must be a 2-D integer array, got {m.dtype} {m.shape}")
    if len(labels) > MAX_INSTANCES:
        raise InstanceError(f"{where}: {len(labels)} instances; at most {MAX_INSTANCES} per image are stored")
    if m.size and (m.min() < 0 or m.max() > len(labels)):
        raise InstanceError(f"{where}: instance map holds id {int(m.max())} but only {len(labels)} label(s) were "
                            "given (ids are 1..n, 0 = background)")
    out = []
    for k, label in enumerate(labels, start=1):
        ys, xs = np.nonzero(m == k)
        if not len(ys):
            raise InstanceError(f"{where}: instance {k} ({label!r}) has no pixels (an empty mask)")
        x0, y0 = int(xs.min()), int(ys.min())
        out.append(Instance(k, str(label), (x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1), int(len(ys))))
    return out


def from_masks(masks, where: str = "item") -> np.ndarray:
    """``n x H x W`` masks (bool or float, > 0.5 = object; a later mask covers an earlier one where
    they overlap) -> an instance map. A single ``H x W`` mask is one instance."""
    arr = np.asarray(masks)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InstanceError(f"{where}: masks must be H x W or n x H x W, got shape {arr.shape}")
    if arr.shape[0] > MAX_INSTANCES:
        raise InstanceError(f"{where}: {arr.shape[0]} masks; at most {MAX_INSTANCES} per image are stored")
    out = np.zeros(arr.shape[1:], dtype=np.uint16)
    for k in range(arr.shape[0]):
        out[arr[k] > 0.5] = k + 1
    return out


def attach_masks(items, masks: list, where: str = "masks") -> None:
    """Give each item its instance masks: ``masks[i]`` (``n x H x W`` or ``H x W``, a ComfyUI MASK)
    belongs to ``items[i]``; instance labels come from the item's ``metadata["instance_labels"]``,
    else every instance is of the item's label. Mask and image must have the same size."""
    if len(masks) != len(items):
        raise InstanceError(f"{where}: {len(masks)} mask entries for {len(items)} images; wire the masks from the "
                            "node that made the images (one entry per image)")
    for n, (item, mask) in enumerate(zip(items, masks)):
        arr = mask.detach().float().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
        at = f"{where} of item {n} (label {item.label!r})"
        imap = from_masks(arr, at)
        h, w = np.asarray(item.image).shape[:2]
        if imap.shape != (h, w):
            raise InstanceError(f"{at}: masks are {imap.shape[1]} x {imap.shape[0]} but the image is {w} x {h}")
        count = arr.shape[0] if arr.ndim == 3 else 1     # masks given (some may be empty or covered)
        present = [k for k in range(1, count + 1) if (imap == k).any()]
        if len(present) != count:      # empty or fully covered masks: renumber the ones with pixels
            lut = np.zeros(count + 1, dtype=np.uint16)
            for new, k in enumerate(present, start=1):
                lut[k] = new
            imap = lut[imap]
        given = (item.metadata or {}).get("instance_labels")
        if given is not None and len(given) != count:
            raise InstanceError(f"{at}: {count} masks but {len(given)} instance_labels in the metadata")
        item.instance_map = imap
        item.instance_labels = tuple(str(given[k - 1]) if given else item.label for k in present)
        instances_of(imap, item.instance_labels, at)   # every id has pixels and a label
