"""Mask-conditioned defect generation (DefFiller's recipe) on real ComfyUI (CPU, tiny SD3):

- the inpainting template's API twin runs; outside the mask the stored image equals the surface
  (within one 8-bit level); the writer stores image + mask pairs and Finalize's COCO export loads;
- the mask IoU filter accepts an image whose change is exactly its mask and rejects the same image
  checked against a wrong (planted) mask.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from support import fixtures
from support.datasets import check_consistent
from support.graphs import example_api, run_ok
from support.pkg import ROOT


def _surface(name: str, size: int) -> np.ndarray:
    from dtgen.nodes.fewshot.pixels import load_image

    folder = fixtures.copy_paste_sets()["dtgen_backgrounds"] / fixtures.BACKGROUND_SET
    return np.round(load_image(folder / name, size, "crop") * 255).astype(np.int16)


def test_inpaint_template_keeps_the_surface_outside_the_mask_and_stores_pairs(client, comfy_server):
    graph = example_api("dtgen_sd35_defect_inpaint", dataset_name="inpaint_run", count=3)
    run_ok(client, graph)
    ds = comfy_server.output_dir / "inpaint_run"
    records = list(check_consistent(ds).values())
    assert len(records) == 3
    for r in records:
        meta = r["metadata"]["defect_mask"]
        mask = np.asarray(Image.open(ds / r["mask"])) > 0
        image = np.asarray(Image.open(ds / r["file"]).convert("RGB"), dtype=np.int16)
        assert mask.sum() == meta["area"] and r["instances"][0]["bbox"] == meta["bbox"]
        outside = np.abs(image - _surface(meta["surface"], 128))[~mask]
        assert outside.max() <= 1, f"{r['file']}: outside the mask the surface changed by {outside.max()} levels"
        iou = r["extra"]["mask_iou"]
        assert r["extra"]["mask_predictor"]["predictor"] == "change_detector" and 0.0 <= iou["iou"] <= 1.0
        if not iou["accepted"]:   # both checks must pass: an IoU rejection is never stored as accepted
            assert r["decision"] == "rejected", r
        if r["decision"] == "accepted":
            assert iou["accepted"] and r["reason"] == "ok", r
    done = subprocess.run([sys.executable, "-m", "runner", "finalize", str(ds), "--export", "coco"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    from pycocotools.coco import COCO

    coco = COCO(str(ds / "annotations" / "instances.json"))
    assert len(coco.getImgIds()) == sum(r["decision"] == "accepted" for r in records)


def _iou_graph(mask_seed: int) -> dict:
    """A surface and its mask from DTGen Mask Sampler; the 'generated' image is the surface with
    the mask filled red (exactly the asked change); the IoU filter checks it against the mask of
    sampler seed ``mask_seed`` (the right one when 0)."""
    sampler = {"class_type": "DTGenPromptSampler", "inputs": {
        "pack": "steel_defects", "mode": "balanced", "seed": 0, "start_index": 0, "count": 2, "classes": "patches",
        "inline_yaml": "", "dataset_name": "", "quota_per_class": 0}}
    masks = {"surfaces": fixtures.BACKGROUND_SET, "size": 128, "min_width": 10, "scale_min": 0.3, "scale_max": 0.5,
             "shapes": "", "real_masks": "none (procedural shapes)"}
    return {
        "1": sampler,
        "2": {"class_type": "DTGenMaskSampler", "inputs": dict(masks, label=["1", 2], metadata=["1", 4], seed=0)},
        "3": {"class_type": "DTGenMaskSampler", "inputs": dict(masks, label=["1", 2], metadata=["1", 4], seed=mask_seed)},
        "4": {"class_type": "EmptyImage", "inputs": {"width": 128, "height": 128, "batch_size": 1, "color": 0xFF0000}},
        "5": {"class_type": "ImageCompositeMasked", "inputs": {"destination": ["2", 0], "source": ["4", 0], "x": 0,
                                                                "y": 0, "resize_source": False, "mask": ["2", 1]}},
        "6": {"class_type": "DTGenMaskIoUFilter", "inputs": {
            "masks": ["3", 1], "images": ["5", 0], "label": ["1", 2], "metadata": ["2", 2], "source_images": ["2", 0],
            "threshold": 0.6, "per_class": "", "min_count": 8, "change_threshold": 0.1, "change_blur": 1.5,
            "change_min_area": 32, "change_opening": 1}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}},
    }


def _decisions(client, graph) -> list[str]:
    result = run_ok(client, graph)
    return " ".join(result.outputs("6").get("text", []))


def test_iou_filter_accepts_the_right_mask_and_rejects_a_planted_wrong_one(client):
    right = _decisions(client, _iou_graph(0))
    assert "kept 2 of 2" in right, right
    ious = [float(x) for x in __import__("re").findall(r"IoU (\d\.\d+)", right)]
    assert len(ious) == 2 and min(ious) >= 0.9, right
    wrong = _decisions(client, _iou_graph(12345))
    assert "kept 0 of 2" in wrong and "mask_iou_below" in wrong, wrong


def test_bad_per_class_thresholds_are_refused_at_queue_time(client, comfy_server):
    import time

    import json

    graph = example_api("dtgen_sd35_defect_inpaint", dataset_name="iou_refused", count=1)
    node = next(k for k, v in graph.items() if v["class_type"] == "DTGenMaskIoUFilter")
    graph[node]["inputs"]["per_class"] = "scratches: 0.45\npatches 0.6"
    answer = client.queue(graph)
    # ComfyUI still runs the outputs that do not depend on the refused node (the mask previews);
    # the filter and the writer behind it never run
    text = json.dumps(answer.get("node_errors", {}).get(node))
    assert "DTGen Mask IoU Filter: per_class line 2 ('patches 0.6'): expected 'label: threshold'" in text, answer
    deadline = time.time() + 300
    while "prompt_id" in answer and not client.history(answer["prompt_id"]).get("status", {}).get("completed"):
        assert time.time() < deadline, "the previews did not finish"
        time.sleep(0.3)
    assert not (comfy_server.output_dir / "iou_refused" / "manifest.jsonl").exists()


def test_the_mask_sampler_refuses_more_than_memory_holds_before_making_anything(client):
    """Thousands of items of 4096² surfaces + masks (hundreds of GB): one line with the estimate, in
    seconds, not a server that grows until it is killed."""
    import time

    graph = example_api("dtgen_sd35_defect_inpaint", dataset_name="mask_too_big", count=4096)
    node = next(k for k, v in graph.items() if v["class_type"] == "DTGenMaskSampler")
    graph[node]["inputs"]["size"] = 4096
    start = time.perf_counter()
    result = client.run(graph)
    elapsed = time.perf_counter() - start
    message = (result.error or {}).get("exception_message", "")
    n = len(result.error["current_inputs"]["label"])   # what the prompt sampler made (its pack caps the count)
    assert message.startswith(f"DTGen Mask Sampler: {n} item(s) of 4096x4096 need about {n / 4:.1f} GB of memory "
                              "for their outputs"), str(result.error)[:800]
    assert n >= 1000 and elapsed < 120, (n, elapsed)
