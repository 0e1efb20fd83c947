"""Dataset report: per-class counts and acceptance rates (``report.json`` + a text table) and
contact sheets (accepted vs rejected thumbnails per class, PNG)."""
from __future__ import annotations

import json
from pathlib import Path

from ..common.files import open_regular
from ..fewshot.pixels import MAX_PIXELS, pillow_errors
from ..store import reader
from ..store.fsio import write_atomic, write_bytes_atomic
from ..store.layout import DatasetError

THUMB = 96
COLUMNS = 8
HEADER = 18


def class_counts(records) -> dict[str, dict]:
    """Per-class counts with total and acceptance rate, sorted by label. ``real`` counts the
    user's real images in the dataset; the rate is that of the generated ones."""
    out = reader.class_counts(records)
    for c in out.values():
        c["total"] = c["accepted"] + c["rejected"]
        c["acceptance_rate"] = round(c["accepted"] / c["total"], 4) if c["total"] else None
    return dict(sorted(out.items()))


def table(per_class: dict[str, dict]) -> str:
    width = max([len("label")] + [len(k) for k in per_class])
    lines = [f"{'label':<{width}}  accepted  rejected  total  rate   real"]
    for label, c in per_class.items():
        rate = "-" if c["acceptance_rate"] is None else f"{100 * c['acceptance_rate']:.1f}%"
        lines.append(f"{label:<{width}}  {c['accepted']:>8}  {c['rejected']:>8}  {c['total']:>5}  {rate:>5}"
                     f"  {c.get('real', 0):>5}")
    acc = sum(c["accepted"] for c in per_class.values())
    tot = sum(c["total"] for c in per_class.values())
    real = sum(c.get("real", 0) for c in per_class.values())
    lines.append(f"{'all':<{width}}  {acc:>8}  {tot - acc:>8}  {tot:>5}  "
                 + (f"{100 * acc / tot:.1f}%" if tot else "-").rjust(5) + f"  {real:>5}")
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def _score_key(rec):
    return -(rec.get("score") if rec.get("score") is not None else float("-inf"))


def contact_sheet(dataset_dir, label: str, records, out_path: Path, max_per_side: int = 24) -> Path:
    """One PNG: accepted thumbnails above rejected ones, each sorted by score (highest first)."""
    from PIL import Image, ImageDraw

    sides = []
    for decision in ("accepted", "rejected"):
        chosen = sorted((r for r in records if r["label"] == label and r["decision"] == decision), key=_score_key)
        sides.append((decision, len(chosen), chosen[:max_per_side]))
    rows = [max(1, -(-len(chosen) // COLUMNS)) for _, _, chosen in sides]
    sheet = Image.new("RGB", (COLUMNS * THUMB, sum(HEADER + r * THUMB for r in rows)), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for (decision, total, chosen), nrows in zip(sides, rows):
        draw.text((4, y + 3), f"{label}: {decision} ({total}, showing {len(chosen)})", fill="black")
        y += HEADER
        for k, rec in enumerate(chosen):
            path = Path(dataset_dir) / rec["file"]
            with pillow_errors(path, DatasetError), open_regular(path) as f, Image.open(f) as im:
                if im.width * im.height > MAX_PIXELS:   # a stored image swapped for a huge one
                    raise DatasetError(path, f"image is {im.width} x {im.height}; at most {MAX_PIXELS / 1e6:.0f} "
                                             "megapixels are read (run reconcile --verify to find the odd files)")
                im = im.convert("RGB")
                im.thumbnail((THUMB - 4, THUMB - 4))
                sheet.paste(im, ((k % COLUMNS) * THUMB + 2, y + (k // COLUMNS) * THUMB + 2))
        y += nrows * THUMB
    write_atomic(out_path, lambda f: sheet.save(f, format="PNG"))
    return out_path
