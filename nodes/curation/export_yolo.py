"""YOLO detection labels for the accepted images of a dataset (Finalize's ``export=(..., "yolo")``).

``labels/<label_dir>/<image stem>.txt`` mirrors ``images/``: Ultralytics finds an image's labels by
replacing the last ``/images/`` of its path by ``/labels/``. One line per instance,
``class cx cy w h`` normalised to 0..1 (class = index in ``export_coco.class_names``, the COCO
category order); an image without instances gets an empty file (a background image).
``data.yaml`` names the classes and the images: ``images`` for train and val without a split, else
one list file per split at the dataset root (``yolo_<split>.txt``, lines ``./images/<label>/<file>``,
which Ultralytics resolves against the list's folder).

The labels tree is built in a hidden folder and swapped in whole (an interrupted export leaves the
previous tree, and the next export removes the leftovers); list files and ``data.yaml`` are each
replaced atomically.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..store import masks
from ..store.fsio import fsync_dir, temp_path, write_bytes_atomic
from ..store.layout import DATA_YAML, IMAGES, LABELS
from .export_coco import image_size, accepted_groups, class_names

LIST_PREFIX = "yolo_"
_TMP, _OLD = f".{LABELS}.tmp-", f".{LABELS}.old-"


def lines(rec: dict, size, class_index: dict) -> str:
    """The label file of one image: ``class cx cy w h`` per instance, normalised by its size."""
    width, height = size
    out = []
    for inst in rec.get("instances") or []:
        x, y, w, h = (float(v) for v in inst["bbox"])
        out.append(f"{class_index[masks.category(inst['label'])]} {(x + w / 2) / width:.6f} "
                   f"{(y + h / 2) / height:.6f} {w / width:.6f} {h / height:.6f}\n")
    return "".join(out)


def _clear_leftovers(dataset_dir: Path) -> None:
    """Hidden trees an interrupted export left (never the live ``labels/``)."""
    for path in dataset_dir.iterdir():
        if path.name.startswith((_TMP, _OLD)) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)


def _build(dataset_dir: Path, accepted: list[dict], class_index: dict) -> Path:
    tree = temp_path(dataset_dir / LABELS)   # .labels.tmp-<pid>-<rand>
    tree.mkdir()
    folders = set()
    for rec in accepted:
        label_dir, name = rec["file"].split("/")[1:]
        folder = tree / label_dir
        if folder not in folders:
            folder.mkdir()
            folders.add(folder)
        (folder / f"{Path(name).stem}.txt").write_text(lines(rec, image_size(dataset_dir, rec), class_index),
                                                      encoding="utf-8")
    if hasattr(os, "sync"):
        os.sync()   # one flush for every small file (an fsync each would cost minutes on big datasets)
    for folder in folders:
        fsync_dir(folder)
    fsync_dir(tree)
    return tree


def _swap(dataset_dir: Path, tree: Path) -> None:
    live = dataset_dir / LABELS
    old = None
    if live.exists():
        old = dataset_dir / f"{_OLD}{tree.name.rsplit('-', 1)[-1]}"
        os.replace(live, old)
    os.replace(tree, live)
    fsync_dir(dataset_dir)
    if old is not None:
        shutil.rmtree(old)


def _yaml(dataset_dir: Path, groups: dict, names: list[str]) -> bytes:
    import yaml

    if None in groups:
        where = {"train": IMAGES, "val": IMAGES}
        note = "# no split: train and val are both images/ (finalize with --split for a held-out val)\n"
    else:
        where = {split: f"{LIST_PREFIX}{split}.txt" for split in groups}
        note = ""
        if "val" not in where:   # Ultralytics requires val
            where["val"] = where.get("test") or where.get("train") or f"{LIST_PREFIX}val.txt"
            note = f"# this split has no val part: val is {where['val']}\n"
    body = {"path": str(dataset_dir.resolve()), **{k: where[k] for k in ("train", "val", "test") if k in where},
            "nc": len(names), "names": dict(enumerate(names))}
    head = ("# YOLO detection dataset written by DTGen finalize (labels/ mirrors images/).\n"
            "# Moved the dataset? Set path to '' and Ultralytics uses this file's folder.\n") + note
    return (head + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)).encode("utf-8")


def write_yolo(dataset_dir, records) -> dict:
    """Write ``labels/``, the split lists and ``data.yaml`` for the accepted ``records``; returns
    ``{"data": "data.yaml", "labels": files, "lists": {split: file}, "unsplit"}``. Run under the
    dataset lock (no image may move meanwhile)."""
    dataset_dir = Path(dataset_dir)
    names = class_names(records)
    class_index = {name: i for i, name in enumerate(names)}
    groups, unsplit = accepted_groups(records)
    accepted = sorted((r for r in records if r["decision"] == "accepted"), key=lambda r: r["file"])
    _clear_leftovers(dataset_dir)
    _swap(dataset_dir, _build(dataset_dir, accepted, class_index))
    lists = {}
    if None not in groups:
        for split, recs in groups.items():
            lists[split] = f"{LIST_PREFIX}{split}.txt"
            write_bytes_atomic(dataset_dir / lists[split], "".join(f"./{r['file']}\n" for r in recs).encode("utf-8"))
    for path in dataset_dir.glob(f"{LIST_PREFIX}*.txt"):   # lists of splits this dataset no longer has
        if path.name not in lists.values() and path.is_file():
            path.unlink()
    write_bytes_atomic(dataset_dir / DATA_YAML, _yaml(dataset_dir, groups, names))
    return {"data": DATA_YAML, "labels": len(accepted), "lists": lists, "unsplit": unsplit}
