"""Dataset writer throughput and memory, next to ComfyUI SaveImage's way of saving, same run.

Prints images/second at 512^2 and 1024^2 for PNG and JPEG:
  * ``saveimage``: what ComfyUI SaveImage does per image (uint8 conversion, PIL PNG
    compress_level=4 with a PngInfo carrying prompt/workflow text, plain ``save`` to the file;
    JPEG: plain ``save`` quality 95) - no fsync, no manifest;
  * ``writer``: ``DatasetWriter.write`` (temp file + fsync + replace + manifest line + fsync),
    batches of 4;
and the writer's resident memory (RSS) while writing 10,000 small items, which must stay flat.

Run: python bench/bench_dataset_writer.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pkg import load_package

load_package()

import numpy as np
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.store.writer import DatasetWriter
from PIL import Image
from PIL.PngImagePlugin import PngInfo

PNG_TEXT = {"prompt": {"3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20}}},
            "workflow": {"nodes": [{"id": 1, "type": "SaveImage"}] * 20}}


def photo_like(size: int, seed: int) -> np.ndarray:
    """Smooth gradients + mild noise: compresses like a generated photo, unlike pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([np.sin(6 * x + seed) * 0.5 + 0.5, y, (x * y + 0.3 * seed % 1)], axis=-1)
    return np.clip(base + rng.normal(0, 0.03, base.shape).astype(np.float32), 0, 1).astype(np.float32)


def saveimage_like(images, folder: Path, fmt: str) -> None:
    for i, image in enumerate(images):
        img = Image.fromarray(np.clip(255.0 * image, 0, 255).astype(np.uint8))
        if fmt == "png":
            info = PngInfo()
            for k, v in PNG_TEXT.items():
                info.add_text(k, json.dumps(v))
            img.save(folder / f"ComfyUI_{i:05}_.png", pnginfo=info, compress_level=4)
        else:
            img.save(folder / f"ComfyUI_{i:05}_.jpg", quality=95)


def writer_run(images, folder: Path, fmt: str, batch: int = 4) -> None:
    items = [ScoredItem(image=im, label=("a", "b")[i % 2], prompt=f"p {i}", seed=i, index=i, score=0.3,
                        metadata={"pack_hash": "bench"}, embedding=np.ones(768, np.float32))
             for i, im in enumerate(images)]
    with DatasetWriter(folder / "ds", image_format=fmt, quality=95) as w:
        for k in range(0, len(items), batch):
            w.write(items[k:k + batch], {"ckpt": "sd3.5"}, {"steps": 20}, PNG_TEXT if fmt == "png" else None)


def rate(fn, images, fmt) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fn(images, Path(tmp), fmt)
        return len(images) / (time.perf_counter() - t0)


def rss_mb() -> float:
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # Linux fallback
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_run(n: int, batch: int = 10) -> list[tuple[int, float]]:
    samples = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp, DatasetWriter(Path(tmp) / "ds") as w:
        for k in range(0, n, batch):
            items = [ScoredItem(image=rng.random((16, 16, 3), dtype=np.float32), label=f"c{i % 10}", prompt=f"p {i}",
                                index=i, score=0.3, metadata={"pack_hash": "mem"},
                                embedding=rng.standard_normal(512).astype(np.float32))
                     for i in range(k, min(n, k + batch))]
            w.write(items, {"ckpt": "x"}, {"steps": 1})
            if (k + batch) % (n // 10) == 0:
                samples.append((k + batch, rss_mb()))
    return samples


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer images (smoke run)")
    args = ap.parse_args()
    counts = {512: 8, 1024: 4} if args.quick else {512: 24, 1024: 8}
    print(f"{'size':>6} {'fmt':>5} {'saveimage img/s':>16} {'writer img/s':>13} {'writer/saveimage':>17}")
    for size, n in counts.items():
        images = [photo_like(size, s) for s in range(n)]
        for fmt in ("png", "jpeg"):
            ref = rate(saveimage_like, images, fmt)
            ours = rate(writer_run, images, fmt)
            print(f"{size:>6} {fmt:>5} {ref:>16.2f} {ours:>13.2f} {ours / ref:>16.2f}x")
    n = 2000 if args.quick else 10_000
    samples = memory_run(n)
    print(f"\nwriter RSS over {n} items (16x16 PNG + 512-d embedding, batches of 10):")
    print("  " + "  ".join(f"{k}:{mb:.1f}MB" for k, mb in samples))
    first, last = samples[0][1], samples[-1][1]
    print(f"  growth from {samples[0][0]} to {samples[-1][0]} items: {last - first:+.1f} MB "
          f"({(last - first) * 2**20 / (samples[-1][0] - samples[0][0]):.0f} bytes/item)")


if __name__ == "__main__":
    main()
