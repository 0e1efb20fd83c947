"""Dataset writer throughput and memory, next to ComfyUI SaveImage's way of saving, same run.

Prints images/second at 512^2 and 1024^2 for PNG and JPEG:
  * ``saveimage``: what ComfyUI SaveImage does per image (uint8 conversion, PIL PNG
    compress_level=4 with a PngInfo carrying prompt/workflow text, plain ``save`` to the file;
    JPEG: plain ``save`` quality 95) - no fsync, no manifest;
  * ``writer``: ``DatasetWriter.write`` (temp file + fsync + replace + manifest line + fsync),
    batches of 4;
the writer's overhead for instance masks: the same items with and without an instance map (three
discs, as a copy-paste image with k = 3 objects has; the mask is one more PNG, written before the
image), ms per item and the ratio, at 512^2 and 1024^2, best of 3 alternating runs each;
and the writer's resident memory (RSS) while writing 10,000 small items, which must stay flat.
Also prints the CPU (as bench_copy_paste.py does) and the load average: other load slows fsync and PNG.

Run: python bench/bench_dataset_writer.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from functools import partial
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


def instance_map(size: int, seed: int) -> np.ndarray:
    """Three non-overlapping discs (ids 1..3) on background 0, like a copy-paste image with k = 3."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    out = np.zeros((size, size), np.uint16)
    for k, (cx, cy) in enumerate(((0.25, 0.3), (0.7, 0.35), (0.45, 0.75)), start=1):
        r = size * rng.uniform(0.12, 0.18)
        out[(x - cx * size) ** 2 + (y - cy * size) ** 2 <= r * r] = k
    return out


def writer_run(images, folder: Path, fmt: str, batch: int = 4, maps=None) -> None:
    items = [ScoredItem(image=im, label=("a", "b")[i % 2], prompt=f"p {i}", seed=i, index=i, score=0.3,
                        metadata={"pack_hash": "bench"}, embedding=np.ones(768, np.float32),
                        instance_map=None if maps is None else maps[i],
                        instance_labels=() if maps is None else (("a", "b")[i % 2],) * 3)
             for i, im in enumerate(images)]
    with DatasetWriter(folder / "ds", image_format=fmt, quality=95) as w:
        for k in range(0, len(items), batch):
            w.write(items[k:k + batch], {"ckpt": "sd3.5"}, {"steps": 20}, PNG_TEXT if fmt == "png" else None)


def rate(fn, images, fmt) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fn(images, Path(tmp), fmt)
        return len(images) / (time.perf_counter() - t0)


def mask_overhead(counts: dict[int, int], runs: int = 3) -> None:
    """Writer ms/item for the same items without and with an instance map (PNG and JPEG images); the
    two are run in turn, ``runs`` times, and the fastest of each kept (the least disturbed by other load)."""
    print(f"\nmask overhead (writer, same items, best of {runs} alternating runs; mask = 8-bit grayscale PNG of "
          "instance ids, 3 instances):")
    print(f"{'size':>6} {'fmt':>5} {'no mask ms/item':>16} {'with mask ms/item':>18} {'with/without':>13}")
    for size, n in counts.items():
        images = [photo_like(size, s) for s in range(n)]
        masked_run = partial(writer_run, maps=[instance_map(size, s) for s in range(n)])
        for fmt in ("png", "jpeg"):
            plain, masked = [], []
            for _ in range(runs):
                plain.append(1000.0 / rate(writer_run, images, fmt))
                masked.append(1000.0 / rate(masked_run, images, fmt))
            print(f"{size:>6} {fmt:>5} {min(plain):>16.1f} {min(masked):>18.1f} {min(masked) / min(plain):>12.2f}x")


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
    # the same CPU line as the copy-paste bench: model, SIMD flags, numpy dispatch
    from bench_copy_paste import cpu_line

    if hasattr(os, "getloadavg"):
        print(f"load average before the run: {os.getloadavg()[0]:.2f}")
    print(cpu_line())
    print(f"{'size':>6} {'fmt':>5} {'saveimage img/s':>16} {'writer img/s':>13} {'writer/saveimage':>17}")
    for size, n in counts.items():
        images = [photo_like(size, s) for s in range(n)]
        for fmt in ("png", "jpeg"):
            ref = rate(saveimage_like, images, fmt)
            ours = rate(writer_run, images, fmt)
            print(f"{size:>6} {fmt:>5} {ref:>16.2f} {ours:>13.2f} {ours / ref:>16.2f}x")
    mask_overhead(counts)
    n = 2000 if args.quick else 10_000
    samples = memory_run(n)
    print(f"\nwriter RSS over {n} items (16x16 PNG + 512-d embedding, batches of 10):")
    print("  " + "  ".join(f"{k}:{mb:.1f}MB" for k, mb in samples))
    first, last = samples[0][1], samples[-1][1]
    print(f"  growth from {samples[0][0]} to {samples[-1][0]} items: {last - first:+.1f} MB "
          f"({(last - first) * 2**20 / (samples[-1][0] - samples[0][0]):.0f} bytes/item)")


if __name__ == "__main__":
    main()
