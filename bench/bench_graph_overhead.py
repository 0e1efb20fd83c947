"""What the DTGen nodes cost inside a real ComfyUI run, next to the stock nodes of the same runs.

Tiny random-weight SD3 + LoRA and a random ViT-B-32 on CPU (built once into ~/.cache/dtgen-demo,
as for ``python -m runner demo``), the main example workflow at 64 px / 4 steps, one item per
queued prompt, two prompts kept queued. Prints:
  * wall time per item of each node class (DTGen Prompt Sampler, CLIP Filter, Dataset Writer vs
    CheckpointLoader/CLIPTextEncode/KSampler/VAEDecode ...), from the websocket ``executing``
    events (a node's time = from its ``executing`` event to the next one), and the ratio
    DTGen nodes / stock nodes; also the DTGen time in the first and the last tenth of the run
    (the filter reads the growing dataset history);
  * the server's resident memory (RSS) after a warm-up and after N items, and the growth in MB
    (target < 50 MB);
  * items/s of the queue client with one server, and of ``--ray`` with two workers on two servers
    (their images sent back to one dataset; needs ray, else skipped).

Run: python bench/bench_graph_overhead.py [--items 1000] [--servers-items 24] [--comfyui PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pkg import load_package

load_package()

from dtgen.runner.api import ComfyAPI
from dtgen.runner.demo import TINY, WORKFLOW, build_tiny_models
from dtgen.runner.local_server import LocalServer, comfy_python, find_comfyui, free_port
from dtgen.runner.packs import local_sampler
from dtgen.runner.progress import Progress
from dtgen.runner.scheduler import QueueRun, RunSettings
from dtgen.runner.workflow import Workflow

WARMUP = 5


def tiny_workflow(dataset: str) -> Workflow:
    wf = Workflow.load(WORKFLOW)
    wf.set_models(ckpt=TINY["checkpoints"], lora=TINY["loras"], clip_weights=TINY["open_clip"])
    for a in ("EmptySD3LatentImage.width=64", "EmptySD3LatentImage.height=64", "KSampler.steps=4"):
        wf.apply_set(a)
    wf.set_dataset(dataset)
    return wf


def timed_run(server: LocalServer, n: int, warmup: int) -> dict:
    """Queue items 0..warmup+n-1 (2 pending), time every node from websocket events, RSS before/after."""
    import websocket  # websocket-client (a test/dev dependency)

    wf = tiny_workflow("bench_overhead")
    kinds = {k: v["class_type"] for k, v in wf.graph.items()}
    api, cid = ComfyAPI(server.url, timeout=120), str(uuid.uuid4())
    ws = websocket.create_connection(server.url.replace("http", "ws") + f"/ws?clientId={cid}", timeout=600)
    total = warmup + n
    per_item: list[dict[str, float]] = []
    queued, current, open_node = 0, {}, None
    rss_before = None
    t_measure = None
    for _ in range(2):
        api.queue_prompt(wf.item_graph(queued, 1), cid)
        queued += 1
    while len(per_item) < total:
        msg = ws.recv()
        now = time.perf_counter()
        if not isinstance(msg, str):
            continue
        event = json.loads(msg)
        kind, data = event["type"], event.get("data", {})
        if kind == "execution_error":
            raise SystemExit(f"item failed: {data.get('node_type')}: {data.get('exception_message')}")
        if kind != "executing":
            continue
        if open_node is not None:
            name = kinds[open_node[0]]
            current[name] = current.get(name, 0.0) + now - open_node[1]
        node = data.get("node")
        open_node = None if node is None else (node, now)
        if node is None:                         # this prompt is done
            per_item.append(current)
            current = {}
            if len(per_item) == warmup:
                rss_before, t_measure = server.rss_mb(), time.perf_counter()
            if queued < total:
                api.queue_prompt(wf.item_graph(queued, 1), cid)
                queued += 1
            if len(per_item) % 50 == 0:
                print(f"  {len(per_item)}/{total} items", file=sys.stderr, flush=True)
    ws.close()
    return {"items": per_item[warmup:], "rss_before": rss_before, "rss_after": server.rss_mb(),
            "seconds": time.perf_counter() - t_measure}


def client_rate(url: str, dataset: str, n: int, output_dir: Path) -> float:
    wf = tiny_workflow(dataset)
    sampler = local_sampler(wf.sampler_inputs())
    settings = RunSettings(server=url, items=n, output_dir=output_dir, poll=0.1)
    with open(os.devnull, "w") as quiet:
        result = QueueRun(wf, sampler, settings, Progress(quiet)).run()
    return result.items_done / result.elapsed


def ray_rate(urls: list[str], dataset: str, n: int, output_dir: Path) -> float:
    """``--ray`` with one worker per server (existing servers), into a dataset under ``output_dir``."""
    from dtgen.runner.ray.cluster import Cluster
    from dtgen.runner.ray.queue import RayQueueRun, RaySettings, WorkerPool

    wf = tiny_workflow(dataset)
    sampler = local_sampler(wf.sampler_inputs())
    settings = RunSettings(server="", items=n, output_dir=output_dir, poll=0.1)
    with Cluster(num_cpus=max(2, len(urls))) as cluster, open(os.devnull, "w") as quiet:
        pool = WorkerPool(cluster.ray, RaySettings(servers=urls), pending=2, driver_node=cluster.node_id())
        try:
            pool.ready(300)
            result = RayQueueRun(wf, sampler, settings, pool, Progress(quiet)).run()
        finally:
            pool.close()
    return result.items_done / result.elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1000, help="measured items (after a warm-up of 5)")
    ap.add_argument("--servers-items", type=int, default=24, help="items per client run for the 1 server vs "
                    "2 Ray workers figure (0 = skip)")
    ap.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH or ~/comfy/ComfyUI)")
    args = ap.parse_args()

    comfyui = find_comfyui(args.comfyui)
    python = comfy_python(comfyui)
    cache = Path.home() / ".cache" / "dtgen-demo"
    models = build_tiny_models(comfyui, python, cache / "models-demo", lambda s: print(s, file=sys.stderr))
    work = Path(tempfile.mkdtemp(prefix="dtgen-bench-"))
    output = work / "output"
    servers = []
    try:
        one = LocalServer(comfyui, work / "s1", free_port(), python=python, model_dirs=models, output_dir=output)
        servers.append(one.start())
        run = timed_run(one, args.items, WARMUP)
        items = run["items"]
        names = sorted({k for it in items for k in it})
        mean = {k: 1000 * sum(it.get(k, 0.0) for it in items) / len(items) for k in names}
        dtgen = sum(v for k, v in mean.items() if k.startswith("DTGen"))
        stock = sum(v for k, v in mean.items() if not k.startswith("DTGen"))
        tenth = max(1, len(items) // 10)

        def dtgen_ms(part):
            return 1000 * sum(v for it in part for k, v in it.items() if k.startswith("DTGen")) / len(part)

        print(f"ComfyUI on CPU, tiny SD3 + LoRA + random ViT-B-32, 64 px, 4 steps; {len(items)} items "
              f"(after {WARMUP} warm-up), 1 item per prompt, 2 queued")
        print(f"{'node class':<28}{'ms/item':>10}")
        for k in sorted(names, key=lambda k: -mean[k]):
            print(f"{k:<28}{mean[k]:>10.1f}")
        print(f"DTGen nodes {dtgen:.1f} ms/item, stock nodes {stock:.1f} ms/item: DTGen / stock = {dtgen / stock:.3f}")
        print(f"DTGen nodes in the first tenth {dtgen_ms(items[:tenth]):.1f} ms/item, in the last tenth "
              f"{dtgen_ms(items[-tenth:]):.1f} ms/item (history grows to {len(items) + WARMUP} items)")
        print("  per node, first tenth -> last tenth (ms/item; stock nodes show the machine's drift):")
        for k in sorted(names, key=lambda k: -mean[k]):
            first, last = (1000 * sum(it.get(k, 0.0) for it in part) / len(part)
                           for part in (items[:tenth], items[-tenth:]))
            print(f"  {k:<26}{first:>8.1f} -> {last:>8.1f}")
        print(f"wall time {1000 * run['seconds'] / len(items):.1f} ms/item "
              f"({len(items) / run['seconds']:.2f} items/s; nodes account for {dtgen + stock:.1f} ms)")
        growth = run["rss_after"] - run["rss_before"]
        print(f"server RSS {run['rss_before']:.0f} MB after warm-up, {run['rss_after']:.0f} MB after "
              f"{len(items)} items: growth {growth:+.1f} MB (target < 50 MB)")

        if args.servers_items:
            n = args.servers_items
            rate1 = client_rate(one.url, "bench_one_server", n, output)
            try:
                import ray  # noqa: F401
            except ImportError:
                print(f"queue client, {n} items: 1 server {rate1:.2f} items/s (2 Ray workers: skipped, no ray)")
                return
            two = LocalServer(comfyui, work / "s2", free_port(), python=python, model_dirs=models,
                              output_dir=work / "output2")
            servers.append(two.start())
            client_rate(two.url, "bench_warm_second", 2, work / "output2")          # load its models first
            rate2 = ray_rate([one.url, two.url], "bench_two_servers", n, work / "central")
            print(f"queue client, {n} items: 1 server {rate1:.2f} items/s, --ray with 2 workers {rate2:.2f} "
                  f"items/s (x{rate2 / rate1:.2f}; both servers share this machine's CPU cores)")
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
