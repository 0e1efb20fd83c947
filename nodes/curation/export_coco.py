"""COCO instances JSON for the accepted images of a dataset (Finalize's ``export=("coco", ...)``).

``annotations/instances.json``, or one ``annotations/instances_<split>.json`` per split when the
dataset has a split (accepted images without a split yet are left out and counted as ``unsplit``).
``file_name`` is relative to ``<dataset>/images`` so
``torchvision.datasets.CocoDetection(root=<dataset>/images, annFile=...)`` opens every image.
Categories are the class folder names of every label in the dataset (record labels and instance
labels), sorted, ids 1..n: the order of ImageFolder's classes, stable when Finalize moves images.
Segmentations are uncompressed RLE (``{"counts": [...], "size": [h, w]}``, column-major runs
starting with background) computed with numpy from the stored mask PNGs; pycocotools reads them.

Each file is streamed into a temp file and moved into place (nothing half-written is ever seen);
the annotation count is checked against ``MAX_ANNOTATIONS`` before anything is written.
"""
from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import numpy as np

from ..common.files import open_regular
from ..common.naming import public_error
from ..store import masks
from ..store.fsio import fsync_dir, is_temp, write_atomic
from ..store.layout import ANNOTATIONS, IMAGES, DatasetError, now_iso

MAX_ANNOTATIONS = 1_000_000   # a COCO file is read whole into memory by every loader
ORDER = ("train", "val", "test")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")


@public_error
class ExportError(DatasetError):
    """An export cannot be written as asked; ``path`` names the file (or mask) at fault."""


def class_names(records) -> list[str]:
    """Sorted class folder names of every label in ``records`` (image labels and instance labels):
    COCO category id - 1 and YOLO class index both index this list."""
    names = {r["label_dir"] for r in records}
    names |= {masks.category(i["label"]) for r in records for i in (r.get("instances") or [])}
    return sorted(names)


def accepted_groups(records) -> tuple[dict[str | None, list[dict]], int]:
    """({split or None: accepted records sorted by file}, accepted records without a split). A
    dataset without any split gives one group, None."""
    accepted = sorted((r for r in records if r["decision"] == "accepted"), key=lambda r: r["file"])
    if not any("split" in r for r in records):
        return {None: accepted}, 0
    groups: dict[str, list[dict]] = {}
    unsplit = 0
    for rec in accepted:
        name = rec.get("split")
        if name is None:
            unsplit += 1
            continue
        if not isinstance(name, str) or not _SPLIT_NAME.match(name):
            raise ValueError(f"record {rec['id']!r}: field 'split' = {name!r} cannot name an export file "
                             "(1-32 ASCII letters, digits, '_' or '-')")
        groups.setdefault(name, []).append(rec)
    order = sorted(groups, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return {name: groups[name] for name in order}, unsplit


def rle(mask: np.ndarray, k: int, bbox) -> dict:
    """Uncompressed COCO RLE of ``mask == k``: run lengths over the pixels in column-major order,
    the first run background (may be 0). Only the columns of ``bbox`` are scanned; the columns
    left and right of it are background runs added at either end."""
    h, w = mask.shape
    x0, bw = int(bbox[0]), int(bbox[2])
    flat = (mask[:, x0:x0 + bw] == k).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], change, [flat.size]))).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    counts[0] += x0 * h
    after = (w - x0 - bw) * h
    if after:
        if len(counts) % 2:   # ends on a background run: extend it
            counts[-1] += after
        else:
            counts.append(after)
    return {"counts": counts, "size": [h, w]}


def image_size(dataset_dir: Path, rec: dict) -> tuple[int, int]:
    """(width, height) of a record's image, from its header (no decode)."""
    from PIL import Image

    path = dataset_dir / rec["file"]
    try:
        with open_regular(path) as f, Image.open(f) as img:
            return img.width, img.height
    except Exception as exc:   # PIL raises many types for broken files
        raise ExportError(path, f"record {rec['id']!r}: image does not open ({type(exc).__name__}: {exc}); "
                          "run `python -m runner reconcile --verify`") from None


def _annotations(dataset_dir: Path, rec: dict, image_id: int, size, category_ids: dict) -> list[dict]:
    """The COCO annotations of one image, from its mask PNG and its record's instances."""
    instances = rec.get("instances") or []
    if not instances:
        return []
    rel = masks.checked_rel(rec.get("mask"), f"record {rec['id']!r}")
    path = dataset_dir / rel
    try:
        mask = masks.read(path)
    except (OSError, ValueError) as exc:
        raise ExportError(path, f"record {rec['id']!r}: mask cannot be read ({exc}); run `python -m runner "
                          "reconcile --verify`") from None
    if mask.shape != (size[1], size[0]):
        raise ExportError(path, f"mask is {mask.shape[1]}x{mask.shape[0]} pixels, its image {rec['file']} is "
                          f"{size[0]}x{size[1]}")
    out = []
    for inst in instances:
        seg = rle(mask, int(inst["id"]), inst["bbox"])
        area = int(sum(seg["counts"][1::2]))
        if area != int(inst["area"]):
            raise ExportError(path, f"instance {inst['id']} has {area} pixels, record {rec['id']!r} says "
                              f"{inst['area']} (field 'instances'); the mask was changed after it was written")
        out.append({"image_id": image_id, "category_id": category_ids[masks.category(inst["label"])],
                    "bbox": [int(v) for v in inst["bbox"]], "area": area, "iscrowd": 0, "segmentation": seg,
                    "instance_id": int(inst["id"])})
    return out


def _numbered(dataset_dir, recs, sizes, image_ids, category_ids, count):
    """The annotations of ``recs``, one image at a time, with ids continuing from ``count[0]``."""
    for rec in recs:
        for ann in _annotations(dataset_dir, rec, image_ids[rec["id"]], sizes[rec["id"]], category_ids):
            count[0] += 1
            yield {"id": count[0], **ann}


def _stream(f, head: dict, annotations) -> None:
    """``head`` (info, images, categories) then the annotations one at a time: memory holds one
    image's annotations, not the file's."""
    enc = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
    f.write(enc.encode(head)[:-1].encode("utf-8") + b',"annotations":[')
    for n, ann in enumerate(annotations):
        f.write((b"," if n else b"") + enc.encode(ann).encode("utf-8"))
    f.write(b"]}\n")


def _file_name(split: str | None) -> str:
    return "instances.json" if split is None else f"instances_{split}.json"


def write_coco(dataset_dir, records, max_annotations: int | None = None) -> dict:
    """Write the COCO file(s) of the accepted ``records`` (live manifest records); returns
    ``{"files": {split or "all": relative path}, "images", "annotations", "unsplit"}``. Earlier
    ``instances*.json`` files this export no longer makes are removed (a dataset that gained a split)."""
    dataset_dir = Path(dataset_dir)
    groups, unsplit = accepted_groups(records)
    total = sum(len(r.get("instances") or []) for recs in groups.values() for r in recs)
    max_annotations = MAX_ANNOTATIONS if max_annotations is None else max_annotations
    if total > max_annotations:
        raise ExportError(dataset_dir / ANNOTATIONS, f"{total:,} annotations; COCO export is limited to "
                          f"{max_annotations:,} (loaders read the whole file into memory) - export YOLO only "
                          "(--export yolo) or split the dataset")
    names = class_names(records)
    category_ids = {name: i for i, name in enumerate(names, start=1)}
    categories = [{"id": i, "name": name, "supercategory": "object"} for name, i in category_ids.items()]
    image_ids = {r["id"]: n for n, r in enumerate(sorted((r for recs in groups.values() for r in recs),
                                                         key=lambda r: r["file"]), start=1)}
    folder = dataset_dir / ANNOTATIONS
    folder.mkdir(exist_ok=True)
    written, count = {}, [0]   # count: annotations so far (ids run on across split files)
    for split, recs in groups.items():
        sizes = {r["id"]: image_size(dataset_dir, r) for r in recs}
        images = [{"id": image_ids[r["id"]], "file_name": r["file"][len(IMAGES) + 1:], "width": sizes[r["id"]][0],
                   "height": sizes[r["id"]][1], "dtgen_id": r["id"]} for r in recs]
        head = {"info": {"description": f"DTGen dataset {dataset_dir.name}", "date_created": now_iso(),
                         "split": split}, "licenses": [], "images": images, "categories": categories}
        anns = _numbered(dataset_dir, recs, sizes, image_ids, category_ids, count)
        name = _file_name(split)
        write_atomic(folder / name, partial(_stream, head=head, annotations=anns), sync_dir=False)
        written[split or "all"] = f"{ANNOTATIONS}/{name}"
    keep = {Path(p).name for p in written.values()}
    for path in folder.iterdir():   # files of an earlier export that this one no longer makes
        if path.is_file() and ((path.name.startswith("instances") and path.suffix == ".json"
                                and path.name not in keep) or is_temp(path)):
            path.unlink()
    fsync_dir(folder)
    return {"files": written, "images": len(image_ids), "annotations": count[0], "unsplit": unsplit}
