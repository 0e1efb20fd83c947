"""Model files and sampler settings read from ComfyUI's hidden prompt."""
from __future__ import annotations

import hashlib
import json

from dtgen.nodes.store.provenance import HashCache, model_files, sampler_settings

PROMPT = {
    "1": {"class_type": "DTGenPromptSampler", "inputs": {"pack": "tableware", "seed": 0}},
    "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd35.safetensors"}},
    "3": {"class_type": "LoraLoader", "inputs": {"model": ["2", 0], "clip": ["2", 1], "lora_name": "t.safetensors",
                                                 "strength_model": 0.8, "strength_clip": 1.0}},
    "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
    "7": {"class_type": "KSampler", "inputs": {"seed": ["1", 3], "steps": 28, "cfg": 4.5, "sampler_name": "euler",
                                               "scheduler": "sgm_uniform", "denoise": 1.0, "model": ["3", 0]}},
}


def test_sampler_settings_keep_literals_and_name_links():
    s = sampler_settings(PROMPT)
    assert s["7"] == {"class_type": "KSampler", "seed": {"linked_from": "1"}, "steps": 28, "cfg": 4.5,
                      "sampler_name": "euler", "scheduler": "sgm_uniform", "denoise": 1.0}
    assert s["6"]["width"] == 1024 and set(s) == {"6", "7"}
    assert sampler_settings(None) == {}


def test_model_files_hash_each_file_once(tmp_path):
    ckpt = tmp_path / "sd35.safetensors"
    ckpt.write_bytes(b"weights" * 1000)
    resolve = {("checkpoints", "sd35.safetensors"): str(ckpt)}
    cache = HashCache(str(tmp_path / "cache" / "hashes.json"))
    out = model_files(PROMPT, lambda folder, name: resolve.get((folder, name)), cache)
    assert out["2"]["files"] == [{"name": "sd35.safetensors", "folder": "checkpoints",
                                  "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}]
    assert out["3"]["files"][0]["sha256"] is None  # the LoRA file is not on disk here
    assert out["3"]["strength_model"] == 0.8
    stored = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert list(stored.values()) == [out["2"]["files"][0]["sha256"]]

    # a second cache reads the stored digest instead of hashing again
    again = HashCache(str(tmp_path / "cache" / "hashes.json"))
    again._data = {k: "remembered" for k in again._data}
    assert again.sha256(str(ckpt)) == "remembered"
    # a changed file (size/mtime) is hashed anew
    ckpt.write_bytes(b"other")
    assert again.sha256(str(ckpt)) == hashlib.sha256(b"other").hexdigest()


def test_damaged_hash_cache_only_costs_rehashing(tmp_path):
    path = tmp_path / "hashes.json"
    path.write_text("{not json")
    f = tmp_path / "f.bin"
    f.write_bytes(b"x")
    assert HashCache(str(path)).sha256(str(f)) == hashlib.sha256(b"x").hexdigest()
