"""API-format graphs used by the integration tests (built in code, model names from fixtures)."""
from __future__ import annotations

import json

from .fixtures import BACKGROUND_SET, CHECKPOINT, CLIP_WEIGHTS, CUTOUT_SET, LORA, REAL_SET, checkpoint_like
from .pkg import ROOT


def stock_sd3_lora(strength: float = 1.0, seed: int = 7, size: int = 128, steps: int = 4,
                   prefix: str = "stock") -> dict:
    """CheckpointLoaderSimple -> LoraLoader -> CLIPTextEncode x2 -> EmptySD3LatentImage -> KSampler
    -> VAEDecode -> SaveImage: the stock part of the DTGen graph."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "LoraLoader", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "lora_name": LORA,
            "strength_model": strength, "strength_clip": strength}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "dtgtableware a clean white plate"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "blurry, cartoon"}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0],
            "seed": seed, "steps": steps, "cfg": 4.5, "sampler_name": "euler", "scheduler": "sgm_uniform",
            "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}},
    }


EXAMPLES = ROOT / "example_workflows" / "api"


def example_api(name: str, **overrides) -> dict:
    """An API twin from example_workflows/api with only the model files swapped for the fixtures (the
    tiny SD3 in the layout of the file the template names: scaled fp8 for ``sd3.5_*_fp8_scaled``), the
    fixture's real photo set, and small sizes and few training steps for CPU; ``overrides`` sets
    sampler/filter/writer widgets by input name."""
    graph = json.loads((EXAMPLES / f"{name}.json").read_text())
    for node in graph.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind in ("CheckpointLoaderSimple", "DTGenTrainCheckpointLoader"):
            inputs["ckpt_name"] = checkpoint_like(inputs["ckpt_name"])
        elif kind == "LoraLoader":
            inputs["lora_name"] = LORA
        elif kind == "DTGenClipLoader":
            inputs["weights"] = CLIP_WEIGHTS
        elif kind == "EmptySD3LatentImage":
            inputs["width"] = inputs["height"] = 128
        elif kind == "KSampler":
            inputs["steps"] = 4
        elif kind == "DTGenFewShotImages":
            inputs.update(folder=REAL_SET, size=64)
        elif kind == "DTGenCopyPaste":
            inputs.update(cutouts=CUTOUT_SET, backgrounds=BACKGROUND_SET, size=128)
        elif kind == "DTGenMaskSampler":
            inputs.update(surfaces=BACKGROUND_SET, size=128, scale_min=0.3)
        elif kind == "TrainLoraNode":   # a few steps in fp32: what a CPU can train in seconds
            inputs.update(steps=3, rank=4, training_dtype="fp32", lora_dtype="fp32", gradient_checkpointing=False,
                          grad_accumulation_steps=1, learning_rate=0.01)
        for key, value in overrides.items():
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = value
    return graph


def manifest(dataset_dir) -> list[dict]:
    """Every line of a dataset's manifest, as written (not folded by id)."""
    lines = (dataset_dir / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def run_ok(client, graph):
    """Run a graph and fail with ComfyUI's error if it did not finish."""
    result = client.run(graph)
    assert result.error is None, json.dumps(result.error, indent=1)[:4000]
    return result

