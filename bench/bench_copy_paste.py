"""Copy-paste synthesis throughput on this CPU.

Material as in the study behind issue #15: 5 real cutouts per class (3 classes, cut from
``skimage.data`` photos by disc, ellipse and threshold masks, some with soft alpha) and 8 real
backgrounds of mixed sizes. Prints images/s at 512 and 1024 px with k = 3 objects per image
(default rotation and flip, no overlap), hard edges and then gaussian blend + jitter; "cold" is the
first pass (each background decoded and fitted once), "warm" a second pass over other items with
the backgrounds cached. Also prints the CPU model and the SIMD flags numpy uses. One process, one
thread (numpy and Pillow are single-threaded here).

Then the ratio to SD3.5 Large's GPU time per 1024^2 image. That time is QUOTED from a public figure,
not measured here (see SD35_QUOTE: its source, GPU, steps and software); the 28-step value is a
linear-in-steps estimate from it, which slightly flatters SD3.5 (text encoders and VAE decode do not
shrink with fewer steps). It compares one CPU thread against one H100, not cost or image quality.
Run from anywhere (needs scikit-image for the photos): ``python bench/bench_copy_paste.py [count]``.
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _pkg import load_package
from PIL import Image

load_package()

from dtgen.nodes.synthesis.copy_paste import CopyPaste, summary
from dtgen.nodes.synthesis.cutouts import load_cutouts

SIMD = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile",
        "amx_bf16", "neon",
        "asimd", "sve")


# Quoted, not measured here: microsoft/onnxruntime pull request #22986 ("Stable Diffusion 3.x and Flux
# Optimization"; the same table is in the message of its commit 6550f4b35b6b), section
# "H100 Benchmark Results": NVIDIA H100 80GB HBM3, 1024x1024, batch size 1, SD 3.5 Large, 50 steps, BF16.
SD35_QUOTE = {
    "source": "https://github.com/microsoft/onnxruntime/pull/22986",
    "what": "SD3.5 Large, 1024x1024, batch 1, 50 steps, BF16, NVIDIA H100 80GB HBM3",
    "seconds": {"PyTorch 2.5.1 eager": 11.615, "PyTorch 2.5.1 torch.compile": 7.466},
    "steps": 50,
}
SD35_STEPS = 28    # SD3.5 Large's usual step count (the ComfyUI and diffusers examples)


def sd35_lines(warm_1024: dict[str, float]) -> list[str]:
    """The quoted SD3.5 GPU time and how many times faster each copy-paste setting (images/s at
    1024^2, warm) is, per image, on this CPU's single thread."""
    q = SD35_QUOTE
    out = [f"SD3.5 GPU time per image, QUOTED (not measured here): {q['what']}:",
           *(f"  {engine}: {sec:.3f} s/image (~{sec * SD35_STEPS / q['steps']:.1f} s at {SD35_STEPS} steps, a "
             "linear estimate)" for engine, sec in q["seconds"].items()),
           f"  source: {q['source']} (section 'H100 Benchmark Results')"]
    for name, rate in warm_1024.items():
        ms = 1000 / rate
        ratios = ", ".join(f"{sec * 1000 / ms:.0f}x vs {engine.split()[-1]} ({sec * SD35_STEPS / q['steps'] * 1000 / ms:.0f}x "
                           f"at {SD35_STEPS} steps)" for engine, sec in q["seconds"].items())
        out.append(f"  1024^2 copy-paste {name} (warm, 1 CPU thread): {ms:.0f} ms/image = {ratios} faster per image")
    return out


def cpu_line() -> str:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags = set(value.split())
    except OSError:
        pass
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:   # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    used = [f for f, on in __cpu_features__.items() if on]
    return (f"CPU: {model}, {os.cpu_count()} logical CPUs\n"
            f"  /proc/cpuinfo SIMD flags: {' '.join(f for f in SIMD if f in flags) or 'unknown'}\n"
            f"  numpy {np.__version__} dispatches: {' '.join(used)}")


def make_material(base: Path) -> tuple[Path, Path]:
    from skimage import data

    def save(path: Path, array) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)

    cut, bg = base / "cutouts", base / "backgrounds"
    photos = {"cup": data.coffee(), "cat": data.chelsea(), "astronaut": data.astronaut()}
    for label, photo in photos.items():
        h, w = photo.shape[:2]
        yy, xx = np.mgrid[:h, :w]
        for k in range(5):
            cy, cx = h * (0.3 + 0.1 * k), w * (0.25 + 0.12 * k)
            ry, rx = h * (0.15 + 0.02 * k), w * (0.12 + 0.03 * k)
            d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
            if k % 2:   # soft alpha
                alpha = (np.clip((1 - d) / 0.15, 0, 1) * 255).astype(np.uint8)
                save(cut / label / f"{label}{k}.png", np.dstack([photo, alpha]))
            else:       # mask file
                save(cut / label / f"{label}{k}.png", photo)
                save(cut / label / f"{label}{k}_mask.png", ((d <= 1) * 255).astype(np.uint8))
    for name in ("camera", "rocket", "brick", "grass", "gravel", "moon", "page", "immunohistochemistry"):
        save(bg / f"{name}.png", getattr(data, name)())
    return cut, bg


def rate(cp: CopyPaste, start: int, count: int) -> float:
    t0 = time.perf_counter()
    for i in range(start, start + count):
        cp.item(i)
    return count / (time.perf_counter() - t0)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    if hasattr(os, "getloadavg"):
        print(f"load average before the run: {os.getloadavg()[0]:.2f}")
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        cut, bg = make_material(Path(tmp))
        cutouts = load_cutouts(cut)
        print(f"material: {sum(map(len, cutouts.values()))} cutouts in {len(cutouts)} classes, 8 backgrounds")
        warm_1024 = {}
        for extra, name in (({}, "hard edges"), ({"blend": "gaussian", "sigma": 1.5, "jitter": 0.2}, "gaussian+jitter")):
            for size in (512, 1024):
                cp = CopyPaste(cutouts, bg, size, objects=(3, 3), **extra)
                n = count if size == 512 else max(1, count // 3)
                cold = rate(cp, 0, n)
                warm = rate(cp, n, n)
                placed = summary(cp.items(0, n)).splitlines()[0]
                print(f"{size:5d}^2 k=3 {name:16s}: cold {cold:6.1f} images/s   warm {warm:6.1f} images/s   "
                      f"({n} items; {placed.split(': ', 1)[1]})")
                if size == 1024:
                    warm_1024[f"k=3 {name}"] = warm
    print("\n".join(sd35_lines(warm_1024)))


if __name__ == "__main__":
    main()
