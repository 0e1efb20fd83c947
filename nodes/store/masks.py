"""Instance masks in a dataset: one 8-bit PNG per image at ``masks/<label_dir>/<image stem>.png``
(pixel value = instance id, 0 = background), with the instances listed in the image's record.

The mask path depends only on the class folder and the image name, not on the decision, so
Finalize moving an image between ``images/`` and ``rejected/`` never touches its mask. The writer
places the mask durably *before* the image (and both before the manifest line); ``reconcile``
keeps a mask and its image together: a mask without a live record goes to ``orphans/masks/``, a
record whose mask is missing or damaged is dropped like a damaged image (the item is made again).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..common.files import open_regular
from ..common.instances import InstanceError, instances_of
from ..common.labels import label_problem, normalise_label
from .layout import MASKS

MASK_EXT = ".png"
PNG_COMPRESS_LEVEL = 4


def mask_rel(label_dir: str, image_name: str) -> str:
    """``masks/<label_dir>/<image stem>.png``: the same stem as the image, whatever its format."""
    return f"{MASKS}/{label_dir}/{Path(image_name).stem}{MASK_EXT}"


def category(label: str) -> str:
    """An instance label's class folder name (``"tea cup"`` -> ``"tea_cup"``), the name exports use,
    so COCO/YOLO classes line up with ImageFolder's class folders."""
    return normalise_label(str(label))


def prepare(item, where: str) -> tuple[np.ndarray | None, list[dict]]:
    """(uint8 mask to store, instances as record dicts) of a ``ScoredItem``; (None, []) without an
    instance map. Checked before anything is written: map shape equals the image's ``H x W``, every
    instance label can be a class folder (exports name classes by folder)."""
    labels = tuple(getattr(item, "instance_labels", ()) or ())
    imap = getattr(item, "instance_map", None)
    if imap is None:
        if labels:
            raise InstanceError(f"{where}: instance_labels {list(labels)[:5]} given without an instance_map")
        return None, []
    m = np.asarray(imap)
    hw = tuple(np.asarray(item.image).shape[:2])
    if m.shape != hw:
        raise InstanceError(f"{where}: instance_map shape {m.shape} differs from the image's H x W {hw}")
    found = instances_of(m, labels, where)
    for inst in found:
        problem = label_problem(category(inst.label))
        if problem:
            raise InstanceError(f"{where}: instance {inst.id} label {inst.label!r}: {problem}")
    out = [{"id": i.id, "label": i.label, "bbox": [int(v) for v in i.bbox], "area": i.area} for i in found]
    return m.astype(np.uint8), out


def encode(mask: np.ndarray, out) -> None:
    """Write an 8-bit grayscale PNG (mode ``L``): values are ids, readable by any image library."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).save(   # 2-D uint8 -> mode L
        out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def read(path: Path) -> np.ndarray:
    """The stored mask as an ``H x W`` uint8 array."""
    from PIL import Image

    with open_regular(path) as f, Image.open(f) as img:
        if img.mode not in ("L", "P"):
            raise ValueError(f"{path}: mask PNG has mode {img.mode!r}, expected 8-bit 'L'")
        return np.asarray(img, dtype=np.uint8)


def mask_files(dataset_dir) -> dict[str, Path]:
    """{relative posix path: path} of the mask PNGs in ``masks/<label>/`` (the walk reconcile makes)."""
    base = Path(dataset_dir) / MASKS
    found = {}
    if not base.is_dir():
        return found
    for label_dir in base.iterdir():
        if label_dir.is_dir():
            for p in label_dir.iterdir():
                if p.is_file() and p.suffix.lower() == MASK_EXT and not p.name.startswith("."):
                    found[f"{MASKS}/{label_dir.name}/{p.name}"] = p
    return found


def checked_rel(rel, where: str) -> str:
    """A record's ``mask`` if it has the only shape DTGen writes (``masks/<folder>/<name>.png``),
    else ValueError: a hand-edited manifest must not make an export read outside the dataset."""
    parts = str(rel).split("/")
    if (len(parts) != 3 or parts[0] != MASKS or not parts[2].endswith(MASK_EXT)
            or any(not p or p.startswith(".") or "\\" in p for p in parts[1:])):
        raise ValueError(f"{where}: field 'mask' = {rel!r} is not masks/<label>/<name>.png")
    return str(rel)


def damage(path: Path, rec: dict, verify: bool, image: Path | None = None) -> str | None:
    """Why a recorded mask is not the one written, or None: its size differs from ``mask_bytes``;
    with ``verify`` also: it does not decode, its size differs from the image's, or it holds an id
    without an instance."""
    size = path.stat().st_size
    if rec.get("mask_bytes") is not None and size != rec["mask_bytes"]:
        return f"{size} bytes, {rec['mask_bytes']} written"
    if not verify:
        return None
    from PIL import Image

    try:
        m = read(path)
        if image is not None:
            with Image.open(image) as img:
                if (img.height, img.width) != m.shape:
                    return f"{m.shape[1]}x{m.shape[0]} pixels, the image is {img.width}x{img.height}"
    except Exception as exc:   # PIL raises many types for broken files
        return f"does not decode ({type(exc).__name__}: {exc})"
    n = len(rec.get("instances") or [])
    if m.size and int(m.max()) > n:
        return f"holds instance id {int(m.max())}, the record lists {n}"
    return None
