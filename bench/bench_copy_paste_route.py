"""The copy-paste route end to end on the CPU: copy-paste -> CLIP filter -> dataset writer, images/s
at 512² and 1024², time per stage, and which stage bounds it (issue #28).

Each queue run does what the graph's nodes do, in their order, on ``--count`` items:
  copy-paste  ``CopyPaste.items`` (bench_copy_paste.py's material: 15 real cutouts in 3 classes,
              8 real backgrounds; 1-3 objects, the node's defaults otherwise: rotation 15, flip,
              gaussian blend), each item an image plus its instance map;
  filter      ``filtering.filter_run`` (class-text side, as copy-paste items carry no prompt;
              mean_std k 1.5; ``precision="auto"``, batch ``--batch``; with the dataset folder, as the
              node is wired: it first waits for this process's background writer, so earlier items
              count as history - that wait is timed apart);
  writer      what the Dataset Writer node does: ``background.for_dataset(...).submit`` (plans and
              hands over; a worker thread encodes the image and mask PNGs, fsyncs, appends the
              manifest) - the node's time is the hand-over; the worker's time overlaps the next
              run's copy-paste and shows up as the filter's wait and the final flush.
End to end = all items / wall time from the first copy-paste to the last item durable (final flush).
Per stage: seconds per image spent in it (the worker's own seconds per image measured apart, writing
the same items synchronously with ``DatasetWriter.write``). The bounding stage is the one with the most
seconds per image. Writer formats: PNG (the default) and JPEG q95 (``--formats``).

``--clock cpu``: one torch thread, and each stage timed in CPU seconds of the main thread, which other
processes do not inflate; the writer worker's own thread is then not counted in the stages (its cost
is the "writer worker (alone)" figure), and "end to end" becomes the sum of the stages' CPU time.

Run: python bench/bench_copy_paste_route.py [--count 32] [--runs 3] [--batch 32] [--formats png,jpeg] [--clock cpu]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _clock import CLOCK, clock, use_clock
from _pkg import load_package

load_package()

import numpy as np
from bench_copy_paste import cpu_line, make_material
from dtgen.nodes.curation.filtering import filter_run
from dtgen.nodes.curation.thresholds import get_method
from dtgen.nodes.scoring.clip_model import load_clip
from dtgen.nodes.store import background
from dtgen.nodes.store.writer import DatasetWriter
from dtgen.nodes.synthesis.copy_paste import CopyPaste
from dtgen.nodes.synthesis.cutouts import load_cutouts



def build_weights(folder: Path) -> Path:
    import open_clip
    import torch
    from safetensors.torch import save_file

    path = folder / "vit_b32_random.safetensors"
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def route(bundle, cp: CopyPaste, ds: Path, fmt: str, runs: int, count: int, batch: int) -> dict:
    """``runs`` queue runs of ``count`` items through the three stages; seconds per stage."""
    method = get_method("mean_std", k=1.5)
    t = {"copy-paste": 0.0, "filter's wait for the writer": 0.0, "filter": 0.0, "writer hand-over": 0.0,
         "final flush": 0.0}
    bw = background.for_dataset(ds)
    start = clock()
    for r in range(runs):
        t0 = clock()
        items = [p.to_scored() for p in cp.items(r * count, count)]
        t1 = clock()
        background.flush(ds)   # what filter_run does first (timed apart; then it finds nothing to wait for)
        t["filter's wait for the writer"] += clock() - t1
        t1 = clock()
        scored, _ = filter_run(bundle, items, method, text_side="class_text", min_count=8, dataset_dir=ds,
                               batch_size=batch)
        t2 = clock()
        with bw.open(image_format=fmt, quality=95) as writer:
            bw.submit(writer, scored.items, models={"clip": bundle.describe()})
        t3 = clock()
        t["copy-paste"] += t1 - t0
        t["filter"] += t2 - t1
        t["writer hand-over"] += t3 - t2
    t4 = clock()
    bw.flush()
    t["final flush"] = clock() - t4
    t["wall"] = clock() - start
    bw.close()
    return t


def worker_alone(cp: CopyPaste, ds: Path, fmt: str, count: int) -> float:
    """Seconds per image of the writer's own work (encode image + mask, fsync, manifest), synchronous."""
    items = [p.to_scored() for p in cp.items(10_000, count)]
    for it in items:
        it.score, it.embedding = 0.3, np.zeros(512, np.float32)
    with DatasetWriter(ds, image_format=fmt, quality=95) as w:
        t = clock()
        w.write(items)
        return (clock() - t) / count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=32, help="items per queue run")
    ap.add_argument("--runs", type=int, default=3, help="queue runs per size and format")
    ap.add_argument("--batch", type=int, default=32, help="filter batch size")
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--formats", default="png,jpeg")
    ap.add_argument("--clock", choices=tuple(CLOCK), default="wall",
                    help="cpu: per-stage CPU seconds of the main thread with one torch thread (a shared CPU)")
    args = ap.parse_args()

    import torch

    use_clock(args.clock)

    if hasattr(os, "getloadavg"):
        print(f"load average before the run: {os.getloadavg()[0]:.2f}")
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cut, bg = make_material(tmp / "material")
        cutouts = load_cutouts(cut)
        bundle = load_clip("ViT-B-32", str(build_weights(tmp)), precision="auto")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; CLIP ViT-B-32 (random weights) "
              f"precision auto -> {bundle.precision}; {args.runs} queue runs x {args.count} items per size and "
              f"format, filter batch {args.batch}")
        for size in (int(s) for s in args.sizes.split(",")):
            cp = CopyPaste(cutouts, bg, size, objects=(1, 3), seed=1)
            cp.items(0, 2)   # backgrounds decoded and fitted once, as a warm node has them
            filter_run(bundle, [p.to_scored() for p in cp.items(5_000, 4)], get_method("mean_std", k=1.5),
                       text_side="class_text", min_count=0, batch_size=args.batch)   # warm-up
            for fmt in args.formats.split(","):
                n = args.runs * args.count
                t = route(bundle, cp, tmp / f"ds_{size}_{fmt}", fmt, args.runs, args.count, args.batch)
                worker = worker_alone(cp, tmp / f"sync_{size}_{fmt}", fmt, min(args.count, 16))
                per = {k: v / n for k, v in t.items() if k != "wall"}
                per["writer worker (alone)"] = worker
                bound = max(("copy-paste", "filter", "writer worker (alone)"), key=per.get)
                if args.clock == "wall":
                    head = f"end to end {n / t['wall']:6.2f} images/s ({n} images in {t['wall']:.1f} s)"
                else:   # one core doing every stage in turn
                    serial = sum(per[k] for k in ("copy-paste", "filter", "writer hand-over", "writer worker (alone)"))
                    head = f"{1 / serial:6.2f} images per CPU-second, all stages on one core ({n} images)"
                print(f"{size:5d}² {fmt:4s}: {head}; ms per image: "
                      + ", ".join(f"{k} {1000 * v:.0f}" for k, v in per.items())
                      + f"; bound by {bound}")
    print("the writer worker runs on its own thread, on the same cores as the other stages; the filter waits "
          "for it (the dataset's history) before scoring")


if __name__ == "__main__":
    main()
