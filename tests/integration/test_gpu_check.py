"""The prepared GPU check: its CPU dry run end to end, and the carried tree's size.

``bash bench/gpu_check.sh --dry-run`` runs every phase of the GPU check (random-weight model build,
the main template through a real ComfyUI's HTTP API with a stub front end, the queue client with
--pending 1/2/4, Train LoRA on the scaled-fp8 layout, the filter encoder comparison) on the tiny models; the figures are CPU figures
and only the mechanics are checked here. ``tools/prepare_gpu_carry.py`` packs ComfyUI and the
wheels the GPU machine lacks; the tree that travels must stay under the device call's 64 MiB.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support.pkg import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_dry_run_runs_every_phase(comfyui_path, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, COMFYUI_PATH=str(comfyui_path))
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "DRY RUN" in proc.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    phases = report["phases"]
    assert report["machine"]["dry_run"] is True and phases["done"] is True
    tiny = phases["per_image_tiny"]
    # 1 cold + 3 timed prompts, each storing its one image
    assert tiny["stored_records"] == 4
    assert tiny["seconds_per_image"] > 0 and tiny["writer_blocking_s"] > 0
    for node in ("KSampler", "VAEDecode", "DTGenClipFilter", "DTGenDatasetWriter"):
        assert tiny["nodes_s"][node] > 0, node
    assert 0 < tiny["dtgen_share_of_wall"] < 1
    pending = phases["pending_tiny"]
    assert sorted(pending, key=int) == ["1", "2", "4"]
    for p, gaps in pending.items():
        assert gaps["prompts"] == 4, (p, gaps)           # the client queued exactly --items prompts
        assert len(gaps["gaps_s"]) == 3 and min(gaps["gaps_s"]) >= 0
    train = phases["train_tiny"]
    assert train["layout"].startswith("scaled fp8") and train["scaled_layers"] == 24
    for mode in ("checkpointing_on", "checkpointing_off"):
        row = train["settings"][mode]
        assert "error" not in row and row["seconds_per_step_upper"] > 0 and row["finite_loss"] is True, (mode, row)
        assert row["seconds_per_step"] is None or row["seconds_per_step"] > 0, row
    f = phases["filter"]
    assert f["dtgen_loop_images_per_s"] > 0 and f["pack_auto"]["images_per_s"] > 0
    assert f["cosine_auto_vs_fp32_min"] > 0.999
    assert not subprocess.run(["pgrep", "-f", "dtgen-gpu-check-"], capture_output=True).stdout


def test_carried_tree_fits_the_device_call(comfyui_path, tmp_path):
    dest = tmp_path / "carry"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "prepare_gpu_carry.py"), "--comfyui",
                           str(comfyui_path), "--dest", str(dest)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "of 64 MiB" in proc.stdout
    comfy = dest / "ComfyUI"
    assert (comfy / "main.py").is_file() and (comfy / "comfy" / "text_encoders" / "t5_tokenizer").is_dir()
    assert not (comfy / "tests").exists() and not (comfy / ".git").exists()
    wheels = sorted(p.name for p in (dest / "wheels").glob("*.whl"))
    for name in ("av-", "open_clip_torch-", "torchsde-", "pydantic-", "websocket_client-"):
        assert any(w.startswith(name) for w in wheels), (name, wheels)
