"""``python -m runner demo`` on a fresh workspace with the test ComfyUI and no real weights: it
builds the embedded tiny models, starts its own server, fills a small quota and finalizes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from support.comfy_server import free_port
from support.not_comfy import not_comfy_server
from support.pkg import ROOT


def demo(args, cwd, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "runner", "demo", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_demo_builds_a_dataset_from_nothing(comfyui_path, tmp_path):
    ws = tmp_path / "ws"
    done = demo(["--comfyui", comfyui_path, "--workspace", ws, "--models-cache", tmp_path / "models",
                 "--port", free_port(), "--quota", 1], ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PIPELINE DEMO" in done.stdout and "pictures are noise" in done.stdout
    ds = ws / "output" / "dtgen_demo"
    assert f"dataset: {ds}" in done.stdout
    lines = [json.loads(x) for x in (ds / "manifest.jsonl").read_text().splitlines() if x.strip()]
    accepted = {r["label"] for r in lines if r["decision"] == "accepted"}
    assert accepted == {"plate_clean", "plate_heavily_dirty", "bowl_clean", "bowl_heavily_dirty"}
    assert all((ds / r["file"]).is_file() for r in lines)
    report = json.loads((ds / "report" / "report.json").read_text())
    assert set(report["per_class"]) == accepted
    assert (ds / "report" / "histogram.png").is_file()
    assert all((ds / "report" / f"contact_{label}.png").is_file() for label in accepted)
    # the pack is linked into the workspace, the ComfyUI tree is not touched
    assert (ws / "custom_nodes" / "dtgen").resolve() == ROOT
    assert not (comfyui_path / "custom_nodes" / "dtgen").exists()
    # the server it started is gone
    assert "demo finished" in done.stdout
    assert (tmp_path / "models" / "checkpoints" / "tiny_sd3.safetensors").is_file()



def test_demo_failures_end_with_one_line(comfyui_path, tmp_path):
    with not_comfy_server() as port:
        done = demo(["--comfyui", comfyui_path, "--workspace", tmp_path / "ws", "--port", port,
                     "--tiny"], ROOT, timeout=300)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "is not ComfyUI" in done.stderr and "--port" in done.stderr

    env = dict(os.environ, HOME=str(tmp_path), COMFYUI_PATH=str(tmp_path / "nowhere"))
    done = demo(["--workspace", tmp_path / "ws2"], ROOT, env=env, timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "no ComfyUI found" in done.stderr and "comfy" in done.stderr
