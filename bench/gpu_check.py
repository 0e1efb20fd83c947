"""The prepared GPU check: the main template on SD3.5-shaped random-weight models through a real
ComfyUI's HTTP API, and where each image's time goes.

For a machine with one NVIDIA H100/H200, Python 3.12 + torch, no internet and a few minutes:
``tools/prepare_gpu_carry.py`` packs ComfyUI's source (trimmed) and the wheels that machine lacks
into ``.gpu_carry/``; ``bash bench/gpu_check.sh`` installs them into a temp folder and runs this.
``--dry-run`` runs every phase on the CPU with the tiny test models (what CI runs).

Phases (each prints as it finishes and goes into ``gpu_check.json`` under ``--out``):
1. build random-weight checkpoints in SD3.5 Medium and Large shapes (plus a rank-16 LoRA) on the
   GPU and save them (nothing is downloaded);
2. per shape: the main template (``example_workflows/api/dtgen_sd35_lora.json``) at 1024² and 28
   steps, one image per prompt, two prompts queued: seconds per image, the per-node time split
   (websocket ``executing`` events), the DTGen nodes' share of the wall time, and peak GPU memory
   (``nvidia-smi`` samples);
3. the queue client (``python -m runner queue``) with ``--pending 1/2/4`` on the first shape: the
   server's idle time between prompts (``/history`` timestamps);
4. LoRA training (``_train_speed.py``, one subprocess per shape): stock TrainLoraNode through DTGen
   Checkpoint Loader's ``train_model`` view on the shape stored as scaled fp8 (the file the training
   templates name), 1024², batch 1, rank 16, bf16, gradient checkpointing on and off: seconds per
   step, peak GPU memory, and whether a step runs under 16 / 24 / 48 GiB allocator caps;
5. the CLIP filter's image encoder: images/s batched on the device (the pack's path, fp16 on CUDA)
   vs DTGen's one-image loop (PIL preprocessing, fp32, one image per call) on the same device.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _pkg import ROOT, load_package  # noqa: E402

load_package()

from _timeline import clear_history, history_windows, idle_gaps, node_split, timed_prompts  # noqa: E402

from dtgen.runner.local_server import LocalServer, find_comfyui, free_port  # noqa: E402
from dtgen.runner.workflow import Workflow  # noqa: E402

TEMPLATE = ROOT / "example_workflows" / "api" / "dtgen_sd35_lora.json"
CLIP_ARCH = "ViT-B-32"  # the template's filter model
# Published reference for "the GPU's sampling time" when no GPU ran here (stated in every report):
# onnxruntime PR #22986 benchmark table, SD3.5 Large 1024², 50 steps, H100 BF16, PyTorch eager.
REFERENCE = {"source": "github.com/microsoft/onnxruntime/pull/22986 (SD3.5 Large, 1024x1024, H100, BF16, "
                       "PyTorch eager, 50 steps: 11.615 s)", "seconds_28_steps": 11.615 * 28 / 50}


class Report:
    """Prints each line and keeps a JSON record under ``out`` (rewritten after every phase)."""

    def __init__(self, out: Path):
        self.out, self.data = out, {"phases": {}}
        out.mkdir(parents=True, exist_ok=True)

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def put(self, key: str, value) -> None:
        self.data["phases"][key] = value
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.out / "gpu_check.json")


class GpuSampler:
    """``nvidia-smi`` every 100 ms in the background: memory used and utilisation, for peaks per phase."""

    def __init__(self):
        self.samples: list[tuple[float, float, float]] = []  # (time, MiB used, util %)
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", "100"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                mem, util = (float(x) for x in line.split(","))
            except ValueError:
                continue
            self.samples.append((time.time(), mem, util))

    def peak_mib(self, since: float, until: float | None = None) -> float | None:
        vals = [m for t, m, _ in self.samples if t >= since and (until is None or t <= until)]
        return max(vals) if vals else None

    def busy_fraction(self, since: float, until: float) -> float | None:
        vals = [u for t, _, u in self.samples if since <= t <= until]
        return sum(1 for u in vals if u > 0) / len(vals) if vals else None

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()


def machine(dry_run: bool) -> dict:
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "cuda": torch.version.cuda, "dry_run": dry_run}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    from dtgen.nodes.scoring.precision import CPUINFO, parse_cpuinfo_flags  # the filter's own reading

    try:
        text = CPUINFO.read_text(errors="replace")
        flags = parse_cpuinfo_flags(text)
        model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    except OSError:
        flags, model = set(), platform.processor()
    info["cpu"] = model
    info["cpu_flags"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return info


def build_models(comfyui: Path, work: Path, shapes, device: str, report: Report) -> dict[str, dict]:
    """Checkpoint + LoRA per shape (subprocess: the GPU memory is free again afterwards) + the CLIP."""
    dirs = {k: work / "models" / k for k in ("checkpoints", "loras", "open_clip")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    files = {}
    for shape in shapes:
        ckpt, lora = f"dtgen_random_sd35_{shape}.safetensors", f"dtgen_random_sd35_{shape}_lora.safetensors"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(BENCH / "_sd35_random.py"), shape, str(dirs["checkpoints"] / ckpt),
                        str(dirs["loras"] / lora), "--device", device], cwd=comfyui, check=True)
        files[shape] = {"ckpt": ckpt, "lora": lora, "build_s": time.perf_counter() - t0,
                        "ckpt_gib": (dirs["checkpoints"] / ckpt).stat().st_size / 2**30}
    clip = f"{CLIP_ARCH}-random.safetensors"
    subprocess.run([sys.executable, str(ROOT / "runner" / "demo_models.py"), "--clip", CLIP_ARCH,
                    str(dirs["open_clip"] / clip)], cwd=comfyui, check=True)
    report.put("models", files)
    return {"dirs": {k: [v] for k, v in dirs.items()}, "files": files, "clip": clip}


def workflow(models: dict, shape: str, size: int, steps: int, dataset: str) -> Workflow:
    wf = Workflow.load(TEMPLATE)
    wf.set_models(ckpt=models["files"][shape]["ckpt"], lora=models["files"][shape]["lora"], clip_weights=models["clip"])
    for a in (f"EmptySD3LatentImage.width={size}", f"EmptySD3LatentImage.height={size}", f"KSampler.steps={steps}"):
        wf.apply_set(a)
    wf.set_dataset(dataset)
    return wf


def per_image(server: LocalServer, wf: Workflow, items: int, gpu: GpuSampler, report: Report, shape: str,
              output: Path) -> dict:
    """One cold prompt (model load), then ``items`` timed prompts with two queued."""
    t0 = time.time()
    cold = timed_prompts(server.url, [wf.item_graph(0, 1)], pending=1)[0]
    t1 = time.time()
    warm = timed_prompts(server.url, [wf.item_graph(i, 1) for i in range(1, items + 1)], pending=2)
    t2 = time.time()
    split = node_split(warm)
    wall = sum(t.wall for t in warm) / len(warm)
    dtgen = sum(v for k, v in split.items() if k.startswith("DTGen"))
    # The last prompt has nothing queued after it, so its writer waits for its files (a finished
    # queue is a complete dataset); the prompts before it show the steady state of a long run.
    steady = node_split(warm[:-1]) if len(warm) > 1 else split
    steady_dtgen = sum(v for k, v in steady.items() if k.startswith("DTGen"))
    sampling = split.get("KSampler", 0.0)
    stored = _stored(output, wf.dataset_name)
    result = {"cold_prompt_s": cold.wall, "seconds_per_image": wall, "nodes_s": split, "dtgen_s": dtgen,
              "dtgen_share_of_wall": dtgen / wall if wall else None,
              "dtgen_fraction_of_sampling": dtgen / sampling if sampling else None,
              "writer_blocking_s": split.get("DTGenDatasetWriter"),
              "steady_nodes_s": steady, "steady_dtgen_s": steady_dtgen,
              "steady_writer_blocking_s": steady.get("DTGenDatasetWriter"),
              "last_writer_s": warm[-1].nodes.get("DTGenDatasetWriter"),
              "prompts": [{"wall": t.wall, "nodes": t.nodes} for t in warm],
              "images_per_s": len(warm) / (t2 - t1), "peak_gpu_mib_cold": gpu.peak_mib(t0, t1),
              "peak_gpu_mib": gpu.peak_mib(t0, t2), "gpu_busy_fraction": gpu.busy_fraction(t1, t2),
              "stored_records": stored}
    report.say(f"\n[{shape}] {len(warm)} images after one cold prompt ({cold.wall:.1f} s incl. model load):")
    report.say(f"  {wall:.3f} s per image, {result['images_per_s']:.3f} images/s (two prompts queued)")
    report.say(f"  {'node class':<28}{'s/image':>10}{'share':>9}")
    for k in sorted(split, key=lambda k: -split[k]):
        report.say(f"  {k:<28}{split[k]:>10.4f}{split[k] / wall:>9.2%}")
    report.say(f"  DTGen nodes: {dtgen * 1000:.1f} ms/image = {dtgen / wall:.2%} of the wall time, "
               f"{dtgen / sampling:.2%} of KSampler's time" if sampling else "  (no KSampler time)")
    if len(warm) > 1:
        report.say(f"  steady state (all but the last prompt, whose writer waits for its files since nothing is "
                   f"queued after it): DTGen nodes {steady_dtgen * 1000:.1f} ms/image = {steady_dtgen / wall:.2%} of "
                   f"the wall time; writer {1000 * steady.get('DTGenDatasetWriter', 0):.1f} ms, filter "
                   f"{1000 * steady.get('DTGenClipFilter', 0):.1f} ms; last prompt's writer "
                   f"{1000 * (result['last_writer_s'] or 0):.1f} ms")
    if result["peak_gpu_mib"] is not None:
        report.say(f"  peak GPU memory {result['peak_gpu_mib']:.0f} MiB (nvidia-smi), GPU busy in "
                   f"{result['gpu_busy_fraction']:.0%} of the 100 ms samples while warm")
    report.say(f"  dataset {wf.dataset_name!r}: {stored} records in the manifest")
    report.put(f"per_image_{shape}", result)
    return result


def _stored(output: Path, dataset: str) -> int:
    manifest = output / dataset / "manifest.jsonl"
    for _ in range(100):  # the writer's background worker may still be finishing the last item
        if manifest.exists():
            break
        time.sleep(0.1)
    return sum(1 for line in manifest.read_text().splitlines() if line.strip()) if manifest.exists() else 0


def pending_sweep(server: LocalServer, models: dict, shape: str, size: int, steps: int, items: int, pendings,
                  work: Path, report: Report) -> dict:
    """The real queue client with each --pending value: the server's idle time between prompts."""
    results = {}
    report.say(f"\n[{shape}] queue client (python -m runner queue), {items} items per run:")
    for n, p in enumerate(pendings):
        dataset = f"gpu_check_pending_{p}"
        wf = workflow(models, shape, size, steps, dataset)
        path = work / f"pending_{p}.json"
        path.write_text(json.dumps(wf.graph))
        clear_history(server.url)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "runner", "queue", str(path), "--server", server.url,
                               "--items", str(items), "--start", str(1000 * (n + 1)), "--pending", str(p),
                               "--dataset", dataset], cwd=ROOT, capture_output=True, text=True, timeout=900)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"queue client failed (--pending {p}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        gaps = idle_gaps(history_windows(server.url))
        gaps["client_s"] = elapsed
        results[p] = gaps
        report.say(f"  --pending {p}: {gaps['prompts']} prompts, mean gap {gaps['mean_gap_ms']:.1f} ms, "
                   f"max {gaps['max_gap_ms']:.0f} ms, server idle {gaps['idle_fraction']:.2%} of the run "
                   f"({gaps['mean_prompt_s']:.3f} s per prompt; client {elapsed:.1f} s)")
    report.put(f"pending_{shape}", results)
    return results


def filter_speed(device: str, images: int, loop_images: int, report: Report) -> dict:
    """Subprocess (its own CUDA context, after the server is gone): see _filter_speed.py."""
    out = subprocess.run([sys.executable, str(BENCH / "_filter_speed.py"), "--device", device, "--arch", CLIP_ARCH,
                          "--images", str(images), "--loop-images", str(loop_images)],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"filter speed failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    report.say(f"\n[filter] {CLIP_ARCH} image encoder on {device} (random weights, real photos):")
    for line in result["lines"]:
        report.say("  " + line)
    report.put("filter", result)
    return result


def train_speed(comfyui: Path, device: str, shape: str, size: int, steps: str, report: Report) -> dict:
    """Subprocess per shape (its own CUDA context and memory caps): see _train_speed.py."""
    out = subprocess.run([sys.executable, str(BENCH / "_train_speed.py"), shape, "--device", device, "--size", str(size),
                          "--steps", steps], cwd=comfyui, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"training phase failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    report.say(f"\n[{shape}] Train LoRA at {size}x{size}, batch 1, rank 16, {result['dtype']}, {result['layout']} "
               f"({result['scaled_layers']} scaled layers; first run incl. load {result['first_run_s']:.1f} s):")
    for name, row in result["settings"].items():
        if "error" in row:
            report.say(f"  {name}: {row['error']}")
            continue
        peak = f", peak {row['peak_reserved_gib']:.1f} GiB reserved" if "peak_reserved_gib" in row else ""
        fits = ", fits " + " ".join(f"{cap} GiB: {'yes' if ok is True else 'no' if ok is False else ok}"
                                    for cap, ok in row.get("fits_gib", {}).items()) if row.get("fits_gib") else ""
        step = (f"{row['seconds_per_step']:.3f} s per step" if row["seconds_per_step"] is not None else
                "s per step lost in noise")
        report.say(f"  {name}: {step} (at most {row['seconds_per_step_upper']:.3f} with set-up){peak}{fits}; "
                   f"loss finite: {row['finite_loss']}")
    report.put(f"train_{shape}", result)
    return result


def _keep_log(server: LocalServer, report: Report) -> None:
    if server.log_path.exists():
        shutil.copy(server.log_path, report.out / "server.log")


def frontend_stub(work: Path) -> Path:
    """ComfyUI serves its editor from --front-end-root: an empty page is enough for the HTTP API."""
    stub = work / "frontend"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "index.html").write_text("<!doctype html><title>DTGen GPU check: API only</title>\n")
    return stub


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny models, small images (what CI runs)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"))
    ap.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH, .gpu_carry/ComfyUI, ~/comfy/ComfyUI)")
    ap.add_argument("--shapes", help="comma-separated: medium,large (default) or tiny (--dry-run)")
    ap.add_argument("--items", type=int, help="timed images per shape (default 4; 3 with --dry-run)")
    ap.add_argument("--pending", default="1,2,4", help="queue client --pending values to compare")
    ap.add_argument("--size", type=int, help="image side (default 1024; 128 with --dry-run)")
    ap.add_argument("--steps", type=int, help="sampling steps (default 28; 4 with --dry-run)")
    ap.add_argument("--no-filter", action="store_true", help="skip the filter encoder comparison")
    ap.add_argument("--no-train", action="store_true", help="skip the LoRA training phase")
    ap.add_argument("--train-size", type=int, help="training image side (default 1024; 64 with --dry-run)")
    ap.add_argument("--budget", type=float, help="seconds: later phases are skipped past it (default 470 on a "
                    "GPU, where device time is short; none with --dry-run, which must run every phase)")
    args = ap.parse_args(argv)
    dry = args.dry_run
    if args.budget is None:
        args.budget = float("inf") if dry else 470.0
    shapes = (args.shapes or ("tiny" if dry else "medium,large")).split(",")
    items = args.items or (3 if dry else 4)
    size, steps = args.size or (128 if dry else 1024), args.steps or (4 if dry else 28)
    pendings = [int(p) for p in args.pending.split(",") if p]
    t_start = time.perf_counter()

    import torch

    device = "cpu" if dry or not torch.cuda.is_available() else "cuda"
    if not dry and device == "cpu":
        raise SystemExit("no CUDA device: run with --dry-run on a CPU machine")
    carried = ROOT / ".gpu_carry" / "ComfyUI"
    comfyui = find_comfyui(args.comfyui or os.environ.get("COMFYUI_PATH") or (carried if carried.exists() else None))
    report = Report(args.out)
    info = machine(dry)
    info.update({"comfyui": str(comfyui), "shapes": shapes, "size": size, "steps": steps, "items": items})
    report.data["machine"] = info
    report.say(f"DTGen GPU check{' (DRY RUN: CPU, tiny models - no GPU figure)' if dry else ''}")
    report.say(f"  {info.get('gpu', 'no GPU')}; torch {info['torch']} (CUDA {info['cuda']}); Python {info['python']}; "
               f"{info['cpus']} CPUs: {info['cpu']} [{' '.join(info['cpu_flags'])}]")
    report.say(f"  template {TEMPLATE.name}, {size}x{size}, {steps} steps, 1 image per prompt")
    report.say(f"  reference sampling time: {REFERENCE['seconds_28_steps']:.2f} s per image at 28 steps, from "
               f"{REFERENCE['source']}")

    work = Path(tempfile.mkdtemp(prefix="dtgen-gpu-check-"))
    gpu = GpuSampler()
    server, failed = None, []
    try:
        models = build_models(comfyui, work, shapes, device, report)
        for shape, f in models["files"].items():
            report.say(f"  model {shape}: {f['ckpt_gib']:.2f} GiB checkpoint, built and saved in {f['build_s']:.1f} s")
        server = LocalServer(comfyui, work / "server", free_port(), python=sys.executable, model_dirs=models["dirs"],
                             cpu=device == "cpu", output_dir=work / "output", install_models=False,
                             extra_args=["--front-end-root", str(frontend_stub(work)), "--disable-api-nodes"],
                             die_with_parent=True)
        t0 = time.perf_counter()
        server.start(timeout=300)
        report.say(f"  ComfyUI up in {time.perf_counter() - t0:.1f} s at {server.url}")
        for n, shape in enumerate(shapes):
            if time.perf_counter() - t_start > args.budget:
                report.say(f"\n[{shape}] skipped: past the {args.budget:.0f} s budget")
                continue
            try:
                res = per_image(server, workflow(models, shape, size, steps, f"gpu_check_{shape}"), items, gpu,
                                report, shape, work / "output")
                ref = REFERENCE["seconds_28_steps"]
                report.say(f"  vs the reference {ref:.2f} s per image: steady-state writer blocking "
                           f"{1000 * (res['steady_writer_blocking_s'] or 0):.1f} ms = "
                           f"{(res['steady_writer_blocking_s'] or 0) / ref:.3%}, all DTGen nodes "
                           f"{res['steady_dtgen_s'] / ref:.3%} (target <= 1 %)")
                if n == 0 and pendings:
                    pending_sweep(server, models, shape, size, steps, max(items, 4), pendings, work, report)
            except Exception as e:  # the next phases still run; the exit status says it failed
                failed.append(f"{shape}: {e}")
                report.say(f"\n[{shape}] FAILED: {e}")
        _keep_log(server, report)
        server.stop()
        server = None
        train_size = args.train_size or (64 if dry else 1024)
        for shape in ([] if args.no_train else shapes):
            if time.perf_counter() - t_start > args.budget:
                report.say(f"\n[{shape}] training skipped: past the {args.budget:.0f} s budget")
                continue
            try:
                train_speed(comfyui, device, shape, train_size, "1,2" if dry else "2,6", report)
            except Exception as e:
                failed.append(f"train {shape}: {e}")
                report.say(f"\n[{shape}] training FAILED: {e}")
        if args.no_filter:
            pass
        elif time.perf_counter() - t_start < args.budget + 60:
            try:
                filter_speed(device, 64 if dry else 256, 8 if dry else 64, report)
            except (Exception, SystemExit) as e:
                failed.append(f"filter: {e}")
                report.say(f"\n[filter] FAILED: {e}")
        else:
            report.say("\n[filter] skipped: past the budget")
    finally:
        if server is not None:
            _keep_log(server, report)
            server.stop()
        gpu.stop()
        shutil.rmtree(work, ignore_errors=True)
    report.data["seconds"] = time.perf_counter() - t_start
    report.data["failed"] = failed
    report.put("done", not failed)
    report.say(f"\ndone in {report.data['seconds']:.0f} s; figures in {report.out / 'gpu_check.json'}")
    if failed:
        report.say("FAILED phases: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
