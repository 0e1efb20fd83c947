"""Train-LoRA phase of the GPU check: stock TrainLoraNode on an SD3.5-shaped random model stored in
the layout the training templates name (scaled fp8, trained through DTGen Checkpoint Loader's
``train_model`` view), at 1024², batch 1, rank 16, bf16, gradient checkpointing on and off.

Per setting: seconds per optimiser step (two runs of different length, the difference divided by
the extra steps, so the model load and LoRA set-up are not counted), the allocator's peak
(``torch.cuda.max_memory_reserved``), and whether one training step runs under an allocator cap of
16, 24 and 48 GiB (``torch.cuda.set_per_process_memory_fraction``; the CUDA context, ~0.5 GiB, comes
on top on a real card). A setting that runs out of memory uncapped says so and the next one runs.

Run inside a process that can import ComfyUI (cwd = the ComfyUI folder); prints one JSON line last.
    python _train_speed.py SHAPE --device cuda [--size 1024] [--steps 2,6] [--caps 16,24,48]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def build_scaled_fp8(shape_name: str, device: str):
    """The shape's MMDiT with random weights, in the scaled-fp8 layout, loaded by ComfyUI -> ModelPatcher."""
    import torch
    import comfy.sd

    from _sd35_random import SHAPES, build_mmdit
    from dtgen.runner.demo_models import to_scaled_fp8

    torch.manual_seed(0)
    mmdit = build_mmdit(SHAPES[shape_name], device, torch.bfloat16 if device != "cpu" else torch.float32)
    sd = {"model.diffusion_model." + k: v.detach() for k, v in mmdit.state_dict().items()}
    del mmdit
    sd = {k: v.to("cpu") for k, v in to_scaled_fp8(sd).items()}
    if device != "cpu":
        torch.cuda.empty_cache()
    model = comfy.sd.load_state_dict_guess_config(sd, output_vae=False, output_clip=False)[0]
    del sd
    return model


def train(view, size: int, steps: int, checkpointing: bool, dtype: str):
    import torch
    from comfy_extras.nodes_train import TrainLoraNode

    g = torch.Generator().manual_seed(0)
    latents = {"samples": torch.randn(1, 16, size // 8, size // 8, generator=g)}
    # SD3.5's conditioning: 77 clip + 77 T5 tokens of 4096 features, and the 2048-wide pooled vector
    positive = [[torch.randn(1, 154, 4096, generator=g), {"pooled_output": torch.randn(1, 2048, generator=g)}]]
    with torch.inference_mode():   # as ComfyUI's executor runs nodes
        out = TrainLoraNode().train(view, latents, positive, 1, steps, 1, 1e-4, 16, "AdamW", "MSE", 0, dtype, dtype,
                                    "LoRA", checkpointing, "[None]")
    return out[2]["loss"]


def is_oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shape")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", default="2,6", help="two run lengths; s/step = time difference / step difference")
    ap.add_argument("--caps", default="16,24,48", help="GiB allocator caps to try one step under")
    ap.add_argument("--checkpointing", default="on,off")
    args = ap.parse_args()
    sys.path.insert(0, os.getcwd())
    sys.path.insert(0, str(BENCH))
    from _pkg import load_package

    load_package()
    if args.device == "cpu":
        from comfy.cli_args import args as comfy_args

        comfy_args.cpu = True
    import torch

    from dtgen.nodes.adapters.trainable_model import scaled_layers, trainable_view

    cuda = args.device != "cpu"
    dtype = "bf16" if cuda else "fp32"
    short, long = (int(s) for s in args.steps.split(","))
    t0 = time.perf_counter()
    model = build_scaled_fp8(args.shape, args.device)
    view = trainable_view(model)
    result = {"shape": args.shape, "size": args.size, "rank": 16, "batch": 1, "dtype": dtype,
              "layout": "scaled fp8 (DTGen train_model view)", "scaled_layers": len(scaled_layers(model)),
              "build_s": time.perf_counter() - t0, "settings": {}}
    if cuda:
        result["gpu"] = torch.cuda.get_device_name(0)
        result["gpu_total_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    t = time.perf_counter()
    train(view, args.size, 1, True, dtype)   # warm-up: moves the model to the device, compiles kernels
    result["first_run_s"] = time.perf_counter() - t
    for mode in args.checkpointing.split(","):
        ckpt = mode == "on"
        row = {}
        try:
            times = {short: [], long: []}
            for steps in (short, short, long):   # the short run twice: the first one still warms up
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                t = time.perf_counter()
                losses = train(view, args.size, steps, ckpt, dtype)
                if cuda:
                    torch.cuda.synchronize()
                times[steps].append(time.perf_counter() - t)
            t_short, t_long = min(times[short]), min(times[long])
            per_step = (t_long - t_short) / (long - short)
            # the difference removes load and set-up; on a busy CPU with tiny steps noise can swamp it,
            # so it is reported only when positive, beside the upper bound (set-up included)
            row.update({"seconds_per_step": per_step if per_step > 0 else None,
                        "seconds_per_step_upper": t_long / long, "run_s": times,
                        "last_loss": losses[-1], "finite_loss": all(l == l for l in losses)})
            if cuda:
                row["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
                row["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        except Exception as exc:  # noqa: BLE001 - an OOM is a result; anything else too, reported
            row["error"] = ("out of memory uncapped: " if is_oom(exc) else "") + f"{type(exc).__name__}: {str(exc)[:300]}"
        if cuda and "error" not in row:
            fits = {}
            for cap in (float(c) for c in args.caps.split(",") if c):
                torch.cuda.empty_cache()
                torch.cuda.set_per_process_memory_fraction(min(1.0, cap * 2**30 / torch.cuda.get_device_properties(0).total_memory))
                try:
                    train(view, args.size, 1, ckpt, dtype)
                    fits[f"{cap:g}"] = True
                except Exception as exc:  # noqa: BLE001
                    fits[f"{cap:g}"] = False if is_oom(exc) else f"{type(exc).__name__}: {str(exc)[:200]}"
                finally:
                    torch.cuda.set_per_process_memory_fraction(1.0)
            row["fits_gib"] = fits
        result["settings"][f"checkpointing_{mode}"] = row
    print(json.dumps(result))


if __name__ == "__main__":
    main()
