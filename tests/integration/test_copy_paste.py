"""Copy-paste datasets on real ComfyUI (CPU), with instance masks, COCO and YOLO labels:

- the CPU-only template ``dtgen_copy_paste`` writes images with masks, filtered by CLIP, in resume
  mode, and Finalize exports COCO (read by pycocotools and torchvision) and YOLO labels;
- the hybrid template fills one dataset with SD3 items and copy-paste items, each source up to
  its own per-class quota;
- a ComfyUI killed with SIGKILL in the middle of a burst leaves no mask without its image and no
  image without its mask; queueing again finishes the job.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from support import fixtures
from support.comfy_server import ComfyClient
from support.datasets import check_consistent
from support.graphs import example_api, run_ok
from support.pkg import ROOT

from .conftest import start_server


def _finalize(dataset) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", "finalize", str(dataset),
                           "--export", "coco,yolo"], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _live(dataset) -> list[dict]:
    return list(check_consistent(dataset).values())


def test_copy_paste_template_writes_masks_and_finalize_exports_coco_and_yolo(client, comfy_server):
    graph = example_api("dtgen_copy_paste", dataset_name="cp_run", count=3)
    run_ok(client, graph)
    run_ok(client, graph)   # resume mode: the next three items, not the same ones again
    ds = comfy_server.output_dir / "cp_run"
    records = _live(ds)
    assert len(records) == 6 and len({r["index"] for r in records}) == 6
    for r in records:
        assert r["source"] == "copy_paste" and r["score"] is not None and r["instances"]
        mask = np.asarray(Image.open(ds / r["mask"]))
        assert mask.shape == (128, 128)
        for inst in r["instances"]:
            ys, xs = np.nonzero(mask == inst["id"])
            x, y, w, h = inst["bbox"]
            assert (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (x, y, w, h)
            assert inst["area"] == len(xs) and inst["label"] == r["label"]

    done = _finalize(ds)
    assert done.returncode == 0, done.stdout + done.stderr
    from pycocotools.coco import COCO
    from torchvision.datasets import CocoDetection

    ann = ds / "annotations" / "instances.json"
    coco = COCO(str(ann))
    accepted = [r for r in _live(ds) if r["decision"] == "accepted"]
    assert len(coco.getImgIds()) == len(accepted)
    for a in coco.loadAnns(coco.getAnnIds()):
        img = coco.loadImgs(a["image_id"])[0]
        rec = next(r for r in accepted if r["file"].endswith(img["file_name"].split("/")[-1]))
        inst = next(i for i in rec["instances"] if i["bbox"] == [round(v) for v in a["bbox"]])
        stored = np.asarray(Image.open(ds / rec["mask"])) == inst["id"]
        assert np.array_equal(coco.annToMask(a).astype(bool), stored)
    loaded = CocoDetection(root=str(ds / "images"), annFile=str(ann))
    assert len(loaded) == len(accepted)
    image, targets = loaded[0]
    assert image.size == (128, 128) and targets and all("segmentation" in t for t in targets)
    for r in accepted:
        stem = r["file"].rsplit("/", 1)[1].rsplit(".", 1)[0]
        lines = (ds / "labels" / r["label_dir"] / f"{stem}.txt").read_text().split("\n")
        assert len([l for l in lines if l.strip()]) == len(r["instances"])
    assert (ds / "data.yaml").is_file()


def test_hybrid_template_fills_each_source_to_its_own_quota(client, comfy_server):
    graph = example_api("dtgen_hybrid_copy_paste", dataset_name="hybrid_run")
    by_class = {n["class_type"]: n for n in graph.values() if n["class_type"] in ("DTGenPromptSampler", "DTGenCopyPaste")}
    by_class["DTGenPromptSampler"]["inputs"].update(classes=",".join(fixtures.REAL_LABELS), quota_per_class=1,
                                                    count=1)
    by_class["DTGenCopyPaste"]["inputs"].update(quota_per_class=2, count=1)
    for _ in range(8):   # until both sources are full (a rejected SD image leaves a gap to refill)
        run_ok(client, graph)
        records = _live(comfy_server.output_dir / "hybrid_run")
        cp = [r for r in records if r["source"] == "copy_paste"]
        sd = [r for r in records if r["source"] == "generated" and r["decision"] == "accepted"]
        if len(cp) == 4 and len(sd) == 2:
            break
    assert sorted(r["label"] for r in cp) == sorted(fixtures.REAL_LABELS * 2), cp
    assert sorted(r["label"] for r in sd) == sorted(fixtures.REAL_LABELS), sd
    assert all(r["mask"] for r in cp) and not any(r.get("mask") for r in records if r["source"] == "generated")
    before = len(records)
    run_ok(client, graph)   # both full: nothing more is made
    assert len(_live(comfy_server.output_dir / "hybrid_run")) == before


def test_sigkill_in_a_burst_leaves_images_and_masks_consistent(comfyui_path, model_dirs, tmp_path):
    base = tmp_path / "victim"
    server = start_server(comfyui_path, base, model_dirs)
    graph = example_api("dtgen_copy_paste", dataset_name="killed", count=64, size=256)
    ds = server.output_dir / "killed"
    try:
        api = ComfyClient(server.url)
        answer = api.queue(graph)
        assert answer["_status"] == 200, answer
        deadline = time.time() + 300
        while time.time() < deadline and not (ds / "masks").is_dir():
            time.sleep(0.05)
        time.sleep(0.3)   # in the middle of the writer's burst
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
    finally:
        server.stop()
    lines = (ds / "manifest.jsonl").read_text().splitlines() if (ds / "manifest.jsonl").exists() else []
    assert len(lines) < 64, "the kill came after the burst: nothing was interrupted"
    server = start_server(comfyui_path, base, model_dirs)
    try:
        api = ComfyClient(server.url)
        graph = example_api("dtgen_copy_paste", dataset_name="killed", count=8, size=256)
        graph["4"]["inputs"]["quota_per_class"] = 0
        for n in graph.values():
            if n["class_type"] == "DTGenCopyPaste":
                n["inputs"]["quota_per_class"] = 40
        run_ok(api, graph)   # opening the dataset reconciles it; resume makes what the kill lost
    finally:
        server.stop()
    records = _live(ds)
    assert len(records) >= 8 and all(r["mask"] and (ds / r["mask"]).is_file() for r in records)
    assert len({(r["stream"], r["index"]) for r in records}) == len(records)
