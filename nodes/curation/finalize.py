"""Finalize a dataset: re-decide every image against the final score population, move files
between ``images/`` and ``rejected/``, add an optional train/val/test split (a column, and on request
one ImageFolder tree per split under ``splits/``, see splits.py), write the report.

Crash-safe order per re-decided image: move the file, then append its ``redecide`` manifest line;
``reconcile`` recognises a moved file without its line (``recovered``), so re-running finalize
after an interruption completes the job. At the end the manifest is compacted atomically (old
one kept as ``manifest.jsonl.bak-<time>``) and ``images/metadata.jsonl`` is rebuilt.

Instance masks never move (their path does not depend on the decision). With instances in the
dataset, Finalize exports them (still under the lock): COCO ``annotations/`` and YOLO ``labels/`` +
``data.yaml`` (export_coco.py, export_yolo.py), each file replaced atomically.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..store import background, embeddings, manifest, metadata
from . import export_coco, export_yolo, report, splits as split_trees
from ..store.fsio import fsync_dir, move_unique
from ..store.clean_marker import mark_clean, mark_dirty
from ..store.layout import IMAGES, MANIFEST, ORPHANS, REJECTED, REPORT, DatasetError, now_iso, open_dataset
from ..store.lock import DatasetLock
from ..store.reader import is_real
from ..store.reconcile import ReconcileReport, reconcile

# decide_fn(records) -> one (accepted, threshold, reason, provisional) per record, same order.
DecideFn = Callable[[list[dict]], Sequence[tuple]]
PlotFn = Callable[[list[dict], Path], object]


@dataclass
class Report:
    per_class: dict[str, dict]
    moved: dict[str, int] = field(default_factory=lambda: {"to_accepted": 0, "to_rejected": 0})
    split: dict[str, int] = field(default_factory=dict)
    report_json: Path | None = None
    contact_sheets: dict[str, Path] = field(default_factory=dict)
    fidelity: dict = field(default_factory=dict)       # per class: fidelity.class_fidelity, or {"note": why not}
    fidelity_plots: dict[str, Path] = field(default_factory=dict)   # per class: real vs synthetic, PCA
    plot: Path | None = None
    plot_image: object = None      # what plot_fn returned (the histogram as an array)
    data: dict = field(default_factory=dict)   # what report.json holds
    reconciled: ReconcileReport | None = None
    split_folders: split_trees.SplitFolders | None = None   # what splits/ holds, when it was built
    exports: dict = field(default_factory=dict)   # {"coco": {...}, "yolo": {...}}: what was exported

    @property
    def table(self) -> str:
        return report.table(self.per_class)


def parse_split(split) -> dict[str, float]:
    """``(0.8, 0.1, 0.1)``, ``"0.8,0.1,0.1"`` or ``{"train": 0.8, "val": 0.1, "test": 0.1}`` -> checked dict."""
    if split is None:
        return {}
    if isinstance(split, str):
        try:
            split = [float(x) for x in split.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"split {split!r}: expected comma-separated fractions like 0.8,0.1,0.1") from None
    if isinstance(split, dict):
        fractions = {str(k): float(v) for k, v in split.items()}
    else:
        values = [float(v) for v in split]
        if not 1 <= len(values) <= 3:
            raise ValueError(f"split {split!r}: give 1 to 3 fractions (train, val, test)")
        fractions = dict(zip(("train", "val", "test"), values))
    for name, frac in fractions.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", name):
            raise ValueError(f"split name {name!r}: use 1-32 ASCII letters, digits, '_' or '-'")
        if not 0 <= frac <= 1:
            raise ValueError(f"split fraction {name}={frac}: must be within 0..1")
    if abs(sum(fractions.values()) - 1) > 1e-6:
        raise ValueError(f"split {fractions}: fractions must sum to 1, not {sum(fractions.values()):.6f}")
    return fractions


EXPORTS = ("coco", "yolo")


def parse_export(export) -> tuple[str, ...] | None:
    """``None`` (auto: both when any record has instances), ``"coco,yolo"``, ``"none"``/``""``/``()``
    (nothing), True/False (both/none) or an iterable of names -> checked tuple in EXPORTS order
    (None stays auto)."""
    if export is None or isinstance(export, bool):   # a checkbox: True = both, False = none
        return None if export is None else (EXPORTS if export else ())
    names = export.split(",") if isinstance(export, str) else list(export)
    names = {str(n).strip().lower() for n in names} - {"", "none"}
    unknown = sorted(names - set(EXPORTS))
    if unknown:
        raise ValueError(f"export {export!r}: unknown format(s) {unknown}; choose from {', '.join(EXPORTS)} (or none)")
    return tuple(n for n in EXPORTS if n in names)


def run_exports(dataset_dir: Path, records: list[dict], kinds: tuple[str, ...] | None) -> dict:
    """Write the asked exports (auto: both when a record has instances); COCO first, so its
    annotation budget refuses before anything is written."""
    if kinds is None:
        kinds = EXPORTS if any(r.get("instances") for r in records) else ()
    out = {}
    if "coco" in kinds:
        out["coco"] = export_coco.write_coco(dataset_dir, records)
    if "yolo" in kinds:
        out["yolo"] = export_yolo.write_yolo(dataset_dir, records)
    return out


def split_of(item_id: str, fractions: dict[str, float]) -> str:
    """Deterministic split from the item id hash: stable across runs, machines and re-decisions."""
    u = int(hashlib.sha256(item_id.encode()).hexdigest()[:12], 16) / 16**12
    acc = 0.0
    for name, frac in fractions.items():
        acc += frac
        if u < acc:
            return name
    return name  # rounding: the last split


def _with_embeddings(dataset_dir, records: list[dict]) -> list[dict]:
    vectors = embeddings.load(dataset_dir, {r["id"] for r in records})
    return [dict(r, embedding=vectors.get(r["id"])) for r in records]


def _move(dataset_dir: Path, rec: dict, accepted: bool) -> str:
    tree = IMAGES if accepted else REJECTED
    _, folder, name = rec["file"].split("/", 2)
    src, dest = dataset_dir / rec["file"], dataset_dir / tree / folder / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():  # not ours (reconcile would have recorded it): keep it aside, never overwrite
        move_unique(dest, dataset_dir / ORPHANS / tree / folder)
    os.replace(src, dest)
    fsync_dir(dest.parent)
    return f"{tree}/{folder}/{name}"


def _redecide(dataset_dir: Path, records: list[dict], decide_fn: DecideFn, result: Report) -> list[dict]:
    decisions = list(decide_fn(_with_embeddings(dataset_dir, records)))
    if len(decisions) != len(records):
        raise ValueError(f"decide_fn returned {len(decisions)} decisions for {len(records)} records")
    method = getattr(decide_fn, "method", None)
    out, updated_in_place = [], []
    for rec, decision in zip(records, decisions):
        accepted, threshold, reason, provisional = decision[:4]
        new = dict(rec, decision="accepted" if accepted else "rejected", reason=str(reason),
                   threshold=None if threshold is None else float(threshold), provisional=bool(provisional),
                   event="redecide", time=now_iso())
        if len(decision) > 4 and decision[4] is not None:   # the real-anchored facts (basis real / both)
            new["extra"] = dict(decision[4])
        if method is not None:  # the decide_fn may say which threshold method it applied
            new["method"] = method
        if new["decision"] != rec["decision"]:
            try:
                new["file"] = _move(dataset_dir, rec, bool(accepted))
            except OSError as e:
                raise DatasetError(dataset_dir / rec["file"], f"could not move image ({e.strerror or e}); "
                                   "run finalize again to complete it") from e
            manifest.append(dataset_dir, [new])  # one durable line per move
            result.moved["to_accepted" if accepted else "to_rejected"] += 1
        elif (new["reason"], new["threshold"], new["provisional"], new.get("method"), new.get("extra")) != (
                rec.get("reason"), rec.get("threshold"), rec.get("provisional"), rec.get("method"), rec.get("extra")):
            updated_in_place.append(new)
        else:
            new = rec
        out.append(new)
    if updated_in_place:
        manifest.append(dataset_dir, updated_in_place)
    return out


def _changes_manifest(dataset_dir: Path, records: list[dict]) -> bool:
    """Whether the compacted ``records`` differ from the manifest file: an unchanged finalize
    (run again, nothing new) then neither rewrites it nor leaves another backup."""
    try:
        current = (dataset_dir / MANIFEST).read_bytes()
    except FileNotFoundError:
        return True
    return current != b"".join(manifest.encode(r) for r in records)


def finalize(dataset_dir, decide_fn: DecideFn | None = None, split=None, plot_fn: PlotFn | None = None,
             contact_sheet_max: int = 24, echo: bool = True, split_folders: bool = False, export=None) -> Report:
    """Re-decide (optional), split (optional), report. Files go to ``<dataset>/report/``.

    ``split_folders``: also (re)build ``<dataset>/splits/<split>/<label>/`` (hard links, else copies,
    of the accepted images, each split with its own ``metadata.jsonl``) from the split given here or,
    without one, the split a previous finalize recorded. Without it an existing ``splits/`` is left
    as it is (a snapshot of the finalize that built it).

    ``export``: ``("coco", "yolo")``, one of them, ``()`` for none; default None exports both when
    any record has instances (see parse_export). Exports are rebuilt by every finalize that makes
    them; one without them leaves earlier exports as they are."""
    dataset_dir = Path(dataset_dir)
    fractions = parse_split(split)
    kinds = parse_export(export)
    background.flush(dataset_dir)   # this process's items still being written are stored first
    open_dataset(dataset_dir, create=False)
    with DatasetLock(dataset_dir):
        split_trees.recover(dataset_dir)   # a build or swap a crash interrupted
        result = Report(per_class={}, reconciled=reconcile(dataset_dir))
        records = list(manifest.live(manifest.read(dataset_dir).records).values())
        if split_folders and not fractions and not any("split" in r for r in records):
            raise ValueError("split_folders needs a split: give one (e.g. 0.8,0.1,0.1); this dataset has none yet")
        mark_dirty(dataset_dir)   # files may move below: a crash must make the next open reconcile
        if decide_fn is not None and records:
            records = _redecide(dataset_dir, records, decide_fn, result)
        if fractions:
            records = [dict(r, split=split_of(r["id"], fractions)) for r in records]
            for r in records:
                if r["decision"] == "accepted":
                    result.split[r["split"]] = result.split.get(r["split"], 0) + 1
        if (decide_fn is not None or fractions) and _changes_manifest(dataset_dir, records):
            manifest.rewrite(dataset_dir, records)   # keeps the old one as a .bak- file
            metadata.regenerate(dataset_dir, records)
        mark_clean(dataset_dir)
        if split_folders:   # still under the lock: no image moves while the links are made
            result.split_folders = split_trees.build(dataset_dir, records)
        result.exports = run_exports(dataset_dir, records, kinds)   # under the lock: no image moves

    out = dataset_dir / REPORT
    out.mkdir(exist_ok=True)
    result.per_class = report.class_counts(records)
    for label in result.per_class:
        folder = next(r["label_dir"] for r in records if r["label"] == label)
        result.contact_sheets[label] = report.contact_sheet(
            dataset_dir, label, records, out / f"contact_{folder}.png", contact_sheet_max)
    result.fidelity, result.fidelity_plots = fidelity_report(dataset_dir, records, out)
    if plot_fn is not None:
        result.plot = out / "histogram.png"
        result.plot_image = plot_fn(records, result.plot)
    result.report_json = out / "report.json"
    result.data = {
        "dataset": dataset_dir.name, "finalized": now_iso(), "per_class": result.per_class,
        "moved": result.moved, "split": {"fractions": fractions, "accepted_counts": result.split},
        "redecided": decide_fn is not None,
        "contact_sheets": {k: v.name for k, v in result.contact_sheets.items()},
        "fidelity": result.fidelity, "fidelity_plots": {k: v.name for k, v in result.fidelity_plots.items()},
        **({"real_anchor": decide_fn.real_note} if getattr(decide_fn, "real_note", None) else {}),
        "plot": result.plot.name if result.plot else None,
        "split_folders": result.split_folders.as_dict() if result.split_folders else None,
        "exports": result.exports or None,
    }
    report.write_json(result.report_json, result.data)
    if echo:
        print(result.table)
        if result.split_folders:
            print(result.split_folders.summary())
        for line in export_lines(result):
            print(line)
    return result


def finalize_summary(result: Report) -> str:
    """Finalize's text on the canvas: the per-class table, moves and split counts."""
    lines = [result.table, f"moved: {result.moved['to_accepted']} to accepted, {result.moved['to_rejected']} "
                           "to rejected"]
    if result.split:
        lines.append("split (accepted): " + ", ".join(f"{k} {v}" for k, v in sorted(result.split.items())))
    if result.data.get("real_anchor"):
        lines.append(f"real-anchored check skipped: {result.data['real_anchor']}")
    return "\n".join(lines + fidelity_lines(result.fidelity) + export_lines(result))


FIDELITY_MAX = 2000     # synthetic images per class the fidelity figures compare (k-NN: n x n distances)


def fidelity_report(dataset_dir: Path, records: list[dict], out: Path) -> tuple[dict, dict]:
    """Per class, the accepted synthetic images against the real photos in CLIP space (their stored
    embeddings, nothing encoded): ``fidelity.class_fidelity`` and a PCA picture ``fidelity_<folder>.png``.
    A class without real photos with embeddings gets ``{"note": why}`` and no picture."""
    import numpy as np
    from PIL import Image

    from .fidelity import class_fidelity, pca_2d
    from .plots import embedding_scatter

    real = [r for r in records if is_real(r) and r.get("embedding_dim")]
    if not real:
        return {}, {}
    synth = {}
    for r in sorted((r for r in records if not is_real(r) and r["decision"] == "accepted"
                     and r.get("embedding_dim")), key=lambda r: r["id"]):
        bucket = synth.setdefault(r["label"], [])
        if len(bucket) < FIDELITY_MAX:
            bucket.append(r)
    vectors = embeddings.load(dataset_dir, {r["id"] for r in real} | {r["id"] for v in synth.values() for r in v})
    figures, plots = {}, {}
    for label in sorted({r["label"] for r in records}):
        mine = [r for r in real if r["label"] == label and r["id"] in vectors]
        fake = [r for r in synth.get(label, []) if r["id"] in vectors]
        if not mine:
            figures[label] = {"note": "no real photos with stored embeddings"}
            continue
        models = {(r.get("extra") or {}).get("clip_model") for r in mine}
        fake_models = {(r.get("extra") or {}).get("clip_model") for r in fake} - {None}
        if fake_models and not fake_models <= models:
            figures[label] = {"note": f"not compared: real embeddings made by {', '.join(sorted(map(str, models)))}, "
                                      f"synthetic by {', '.join(sorted(fake_models))}"}
            continue
        r_emb = np.stack([vectors[r["id"]] for r in mine]).astype(np.float64)
        f_emb = np.stack([vectors[r["id"]] for r in fake]).astype(np.float64) if fake else np.zeros((0, r_emb.shape[1]))
        if f_emb.shape[1] != r_emb.shape[1]:
            figures[label] = {"note": f"not compared: real embeddings have {r_emb.shape[1]} dimensions, synthetic "
                                      f"{f_emb.shape[1]}"}
            continue
        figures[label] = class_fidelity(r_emb, f_emb)
        if fake:
            real_xy, fake_xy = pca_2d(r_emb, f_emb)
            path = out / f"fidelity_{mine[0]['label_dir']}.png"
            Image.fromarray(embedding_scatter(real_xy, fake_xy, f"{label}: real vs synthetic (PCA)")).save(path)
            plots[label] = path
    return figures, plots


def fidelity_lines(figures: dict) -> list[str]:
    """One canvas line per class; none for a dataset without real photos with embeddings (as before)."""
    from .fidelity import fidelity_line

    return [fidelity_line(label, fig) if "n_real" in fig else f"{label}: fidelity skipped ({fig['note']})"
            for label, fig in figures.items()]


def export_lines(result: Report) -> list[str]:
    """One line per export written: where it is and how much it holds."""
    out = []
    if "coco" in result.exports:
        coco = result.exports["coco"]
        out.append(f"COCO: {coco['annotations']} annotations on {coco['images']} images in "
                   + ", ".join(coco["files"].values()))
    if "yolo" in result.exports:
        yolo = result.exports["yolo"]
        out.append(f"YOLO: {yolo['labels']} label files in labels/, {', '.join([*yolo['lists'].values(), yolo['data']])}")
    return out

