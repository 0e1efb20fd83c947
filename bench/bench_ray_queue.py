"""The ``--ray`` queue: how fast the driver stores, and what Ray costs per item.

Prints, from one run:
  * the driver's store rate (items/s): ``DatasetIngest.store`` of already-encoded 1024^2 PNGs and
    JPEGs (records, files and 512-d embeddings exactly as a worker's scratch writer made them,
    batches of 4, every fsync on), next to ``DatasetWriter.write`` of the same images (encode +
    store: what the driver would cost if it decoded and re-encoded). N GPUs give N x the images
    of one until their total reaches this rate;
  * Ray's per-item overhead against the single-server HTTP client on the same tiny graph (tiny
    SD3 + LoRA + random ViT-B-32 on CPU, 64 px, 3 steps, 1 item per prompt, 2 in flight) and the
    same ComfyUI server: ``QueueRun`` vs ``RayQueueRun`` with one Ray worker on that server
    (the worker's blocks go to a scratch dataset, come back through Ray's object store and are
    stored by the driver); s/item of each, the ratio and the difference in ms/item. The runs
    alternate (HTTP, Ray, HTTP, Ray, ...; --reps each) and the best of each is kept (other load on
    the machine only slows a run down);
  * the CPU model and SIMD flags (as bench_copy_paste.py) and the load average.

Run: python bench/bench_ray_queue.py [--items 24] [--reps 3] [--store-items 32] [--comfyui PATH]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pkg import load_package

load_package()

import numpy as np
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.store.ingest import DatasetIngest, ScratchReader
from dtgen.nodes.store.writer import DatasetWriter

BATCH = 4


def photo_like(size: int, seed: int) -> np.ndarray:
    """Smooth gradients + mild noise: compresses like a generated photo (bench_dataset_writer.py)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([np.sin(6 * x + seed) * 0.5 + 0.5, y, (x * y + 0.3 * seed % 1)], axis=-1)
    return np.clip(base + rng.normal(0, 0.03, base.shape).astype(np.float32), 0, 1).astype(np.float32)


def items(n: int, size: int, offset: int = 0) -> list[ScoredItem]:
    rng = np.random.default_rng(offset)
    return [ScoredItem(image=photo_like(size, offset + i), label=("plate", "bowl")[i % 2], prompt=f"p {i}", seed=i,
                       index=offset + i, score=0.3, threshold=0.25, method="mean_std", accepted=i % 5 != 4,
                       metadata={"pack_hash": "bench", "stream": "bench-stream"},
                       embedding=rng.standard_normal(512).astype(np.float32)) for i in range(n)]


def store_rates(work: Path, n: int, fmt: str, size: int = 1024) -> tuple[float, float, float]:
    """(ingest items/s, writer items/s, mean file MB) for ``n`` items of ``fmt``."""
    scratch, central, direct = work / f"scratch-{fmt}", work / f"central-{fmt}", work / f"writer-{fmt}"
    made = items(n, size)
    with DatasetWriter(scratch, image_format=fmt) as w:          # what a worker's ComfyUI writes
        for k in range(0, n, BATCH):
            w.write(made[k:k + BATCH])
    encoded = ScratchReader(scratch, drop_files=False).take()
    mb = sum(len(it.image) for it in encoded) / len(encoded) / 1e6
    with DatasetIngest(central) as d:
        t0 = time.perf_counter()
        for k in range(0, n, BATCH):
            d.store(encoded[k:k + BATCH])
        ingest = n / (time.perf_counter() - t0)
    with DatasetWriter(direct, image_format=fmt) as w:           # decode-free, but encoding again
        t0 = time.perf_counter()
        for k in range(0, n, BATCH):
            w.write(made[k:k + BATCH])
        writer = n / (time.perf_counter() - t0)
    return ingest, writer, mb


def overhead(work: Path, n: int, comfyui_arg, reps: int = 3) -> dict:
    """s/item of the HTTP client and of Ray (one worker) on one ComfyUI server, ``reps`` runs each,
    alternating."""
    from dtgen.runner.demo import TINY, WORKFLOW, build_tiny_models
    from dtgen.runner.local_server import LocalServer, comfy_python, find_comfyui, free_port
    from dtgen.runner.packs import local_sampler
    from dtgen.runner.progress import Progress
    from dtgen.runner.ray.cluster import Cluster
    from dtgen.runner.ray.queue import RayQueueRun, RaySettings, WorkerPool
    from dtgen.runner.scheduler import QueueRun, RunSettings
    from dtgen.runner.workflow import Workflow

    comfyui = find_comfyui(comfyui_arg)
    python = comfy_python(comfyui)
    models = build_tiny_models(comfyui, python, Path.home() / ".cache" / "dtgen-demo" / "models-demo",
                               lambda s: print(s, file=sys.stderr))
    quiet = open(os.devnull, "w")

    def workflow(dataset):
        wf = Workflow.load(WORKFLOW)
        wf.set_models(ckpt=TINY["checkpoints"], lora=TINY["loras"], clip_weights=TINY["open_clip"])
        for a in ("EmptySD3LatentImage.width=64", "EmptySD3LatentImage.height=64", "KSampler.steps=3"):
            wf.apply_set(a)
        wf.set_dataset(dataset)
        return wf, local_sampler(wf.sampler_inputs())

    def http(url, dataset, count, start):
        wf, sampler = workflow(dataset)
        settings = RunSettings(server=url, items=count, start=start, output_dir=work / "http-out", poll=0.1)
        return QueueRun(wf, sampler, settings, Progress(quiet)).run()

    def ray_run(pool, dataset, count, start):
        wf, sampler = workflow(dataset)
        settings = RunSettings(server="", items=count, start=start, output_dir=work / "ray-central", poll=0.1)
        return RayQueueRun(wf, sampler, settings, pool, Progress(quiet)).run()

    server = LocalServer(comfyui, work / "server", free_port(), python=python, model_dirs=models,
                         output_dir=work / "http-out").start()
    out = {"http": [], "ray": []}
    try:
        with Cluster(num_cpus=2) as cluster:
            pool = WorkerPool(cluster.ray, RaySettings(servers=[server.url]), pending=2, driver_node=cluster.node_id())
            try:
                pool.ready(300)
                http(server.url, "warm_http", 4, 0)                   # models loaded, caches warm
                ray_run(pool, "warm_ray", 4, 0)
                for rep in range(reps):
                    r = http(server.url, f"http_{rep}", n, 100)
                    assert r.items_done == n, r
                    out["http"].append(r.elapsed / n)
                    r = ray_run(pool, f"ray_{rep}", n, 100)
                    assert r.items_done == n, r
                    out["ray"].append(r.elapsed / n)
            finally:
                pool.close()
    finally:
        server.stop()
        quiet.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=24, help="items per timed queue run (HTTP and Ray)")
    ap.add_argument("--store-items", type=int, default=32, help="1024^2 items per format for the store rate")
    ap.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH or ~/comfy/ComfyUI)")
    ap.add_argument("--reps", type=int, default=3, help="timed runs of each client (alternating; best kept)")
    ap.add_argument("--skip-overhead", action="store_true", help="only the store rate (no ComfyUI, no Ray)")
    args = ap.parse_args()

    from bench_copy_paste import cpu_line

    if hasattr(os, "getloadavg"):
        print(f"load average before the run: {os.getloadavg()[0]:.2f}")
    print(cpu_line())
    work = Path(tempfile.mkdtemp(prefix="dtgen-bench-ray-"))
    try:
        print(f"driver store rate, 1024^2 images, batches of {BATCH}, fsync on ({work}):")
        for fmt in ("png", "jpeg"):
            ingest, writer, mb = store_rates(work, args.store_items, fmt)
            print(f"  {fmt:<5} {mb:5.2f} MB/image: ingest of the encoded bytes {ingest:7.1f} items/s, "
                  f"writer (encode + store) {writer:6.1f} items/s: ingest x{ingest / writer:.1f}")
        if not args.skip_overhead:
            t = overhead(work, args.items, args.comfyui, args.reps)
            h, r = min(t["http"]), min(t["ray"])
            print(f"per item, {args.items} items per run, tiny graph on one CPU ComfyUI (best of "
                  f"{len(t['http'])}; runs: HTTP {', '.join(f'{x:.3f}' for x in t['http'])} s, "
                  f"Ray {', '.join(f'{x:.3f}' for x in t['ray'])} s):")
            print(f"  HTTP client {h:.3f} s/item, Ray (1 worker) {r:.3f} s/item: Ray / HTTP = {r / h:.2f}, "
                  f"overhead {1000 * (r - h):+.0f} ms/item")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
