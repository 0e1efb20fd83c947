"""``python -m runner demo`` on a fresh workspace with the test ComfyUI and no real weights: it
builds the embedded tiny models, draws placeholder photos, starts its own server, trains a LoRA on
the photos, generates with it, fills a small quota, adds the photos as real images and finalizes.
Then, on the same server, the copy-paste template fills a second dataset from drawn cutouts and table
textures (no diffusion model), with instance masks, finalized with a COCO and a YOLO export."""
from __future__ import annotations

import json
import os
import re
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
    accepted = {r["label"] for r in lines if r["decision"] == "accepted" and r["source"] == "generated"}
    assert accepted == {"plate_clean", "plate_heavily_dirty", "bowl_clean", "bowl_heavily_dirty"}
    # the few-shot step: placeholder photos -> a trained LoRA; the photos join the dataset as real images
    photos = ws / "fewshot" / "placeholder_photos"
    assert f"photo set: {photos}" in done.stdout and "PLACEHOLDER" in done.stdout
    assert {p.name for p in photos.iterdir()} == accepted
    loras = sorted((ws / "output" / "loras").glob("dtgen_tableware_lora_3_steps_*.safetensors"))
    assert len(loras) == 1 and f"trained LoRA: {loras[0]}" in done.stdout
    real = [r for r in lines if r["source"] == "real"]
    assert {r["label"] for r in real} == accepted and all(r["decision"] == "accepted" for r in real)
    for label in accepted:   # 3 photos per class, 0.2 held out from training: 2 stored
        assert re.search(rf"^  {label} +1 accepted +\d+ rejected +2 real$", done.stdout, re.MULTILINE), done.stdout
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
    assert (tmp_path / "models" / "checkpoints" / "tiny_sd3_fp8_scaled.safetensors").is_file()
    _check_copy_paste(ws, accepted, done.stdout)


def _check_copy_paste(ws, labels, stdout):
    """The copy-paste dataset: drawn cutouts of the photo classes on drawn tables, 1 accepted image per
    class, each with its mask, exported for COCO (pycocotools reads it) and YOLO; stdout names it all."""
    import numpy as np
    from PIL import Image
    from pycocotools.coco import COCO

    assert "PLACEHOLDER cutouts" in stdout and "PLACEHOLDER table textures" in stdout
    ds = ws / "output" / "dtgen_demo_copy_paste"
    assert f"copy-paste dataset: {ds}" in stdout
    cut, bg = ws / "cutouts" / "placeholder_cutouts", ws / "backgrounds" / "placeholder_tables"
    assert f"  cutouts: {cut} (drawn placeholders" in stdout and f"  backgrounds: {bg} (drawn placeholder" in stdout
    lines = [json.loads(x) for x in (ds / "manifest.jsonl").read_text().splitlines() if x.strip()]
    live = {r["id"]: r for r in lines}.values()
    assert lines and all(r["source"] == "copy_paste" for r in live)
    assert {r["label"] for r in live if r["decision"] == "accepted"} == labels
    for r in live:
        assert (ds / r["file"]).is_file() and r["mask"] == f"masks/{r['label_dir']}/{r['file'].rsplit('/', 1)[1]}"
        mask = np.asarray(Image.open(ds / r["mask"]))
        assert mask.shape == (256, 256) and r["instances"]
        assert sorted(np.unique(mask[mask > 0]).tolist()) == [i["id"] for i in r["instances"]]
    for label in labels:
        assert re.search(rf"^  {label} +1 accepted +\d+ rejected$", stdout, re.MULTILINE), stdout
    accepted = [r for r in live if r["decision"] == "accepted"]
    ann = ds / "annotations" / "instances.json"
    coco = COCO(str(ann))
    assert len(coco.getImgIds()) == len(accepted) and len(coco.getAnnIds()) == sum(len(r["instances"]) for r in accepted)
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == labels
    assert f"  COCO: {ann} ({len(coco.getAnnIds())} annotations on {len(accepted)} images)" in stdout
    for r in accepted:
        stem = r["file"].rsplit("/", 1)[1].rsplit(".", 1)[0]
        rows = (ds / "labels" / r["label_dir"] / f"{stem}.txt").read_text().split("\n")
        assert len([row for row in rows if row.strip()]) == len(r["instances"])
    assert f"  YOLO: {ds / 'labels'} ({len(accepted)} label files), {ds / 'data.yaml'}" in stdout
    assert (ds / "data.yaml").is_file() and f"  masks: {ds / 'masks'}" in stdout and f"  images: {ds / 'images'}" in stdout
    assert (ds / "report" / "report.json").is_file()



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
