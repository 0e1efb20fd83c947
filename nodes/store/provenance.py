"""Provenance read from ComfyUI's hidden prompt: which model files and sampler settings made an image.

Plain Python: the caller passes the API-format prompt (a dict of nodes) and a function that maps
(model folder, file name) to a path. File hashes are sha256, cached per (path, size, mtime) in a
small JSON file so a 10 GB checkpoint is hashed once, not once per image.
"""
from __future__ import annotations

import json
import os
import threading
from typing import Callable, Optional

from ..common.hashing import sha256_file

# class_type -> [(input name, model folder)]: the stock loaders DTGen graphs use.
MODEL_INPUTS = {
    "CheckpointLoaderSimple": [("ckpt_name", "checkpoints")],
    "CheckpointLoader": [("ckpt_name", "checkpoints")],
    "DTGenTrainCheckpointLoader": [("ckpt_name", "checkpoints")],
    "UNETLoader": [("unet_name", "diffusion_models")],
    "LoraLoader": [("lora_name", "loras")],
    "LoraLoaderModelOnly": [("lora_name", "loras")],
    "TripleCLIPLoader": [("clip_name1", "text_encoders"), ("clip_name2", "text_encoders"),
                         ("clip_name3", "text_encoders")],
    "DualCLIPLoader": [("clip_name1", "text_encoders"), ("clip_name2", "text_encoders")],
    "CLIPLoader": [("clip_name", "text_encoders")],
    "VAELoader": [("vae_name", "vae")],
    "DTGenClipLoader": [("weights", "open_clip")],
}
SAMPLER_TYPES = {"KSampler", "KSamplerAdvanced", "SamplerCustom"}
SAMPLER_FIELDS = ("seed", "noise_seed", "steps", "cfg", "sampler_name", "scheduler", "denoise",
                  "start_at_step", "end_at_step")
LATENT_TYPES = {"EmptySD3LatentImage", "EmptyLatentImage"}
LORA_FIELDS = ("strength_model", "strength_clip")


def _literal(value):
    """Widget values are literals; a linked input is ``[node_id, output]`` -> say where it came from."""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
        return {"linked_from": str(value[0])}
    return value


def sampler_settings(prompt: Optional[dict]) -> dict:
    """{node_id: {class_type, settings}} of samplers and empty latents in the prompt."""
    out = {}
    for nid, node in (prompt or {}).items():
        kind = node.get("class_type")
        inputs = node.get("inputs", {})
        if kind in SAMPLER_TYPES:
            fields = SAMPLER_FIELDS
        elif kind in LATENT_TYPES:
            fields = ("width", "height", "batch_size")
        else:
            continue
        out[str(nid)] = {"class_type": kind, **{f: _literal(inputs[f]) for f in fields if f in inputs}}
    return out


def model_files(prompt: Optional[dict], resolve: Callable[[str, str], Optional[str]],
                hashes: "HashCache") -> dict:
    """{node_id: {class_type, files: [{name, folder, sha256}], strengths...}} of model loaders."""
    out = {}
    for nid, node in (prompt or {}).items():
        kind = node.get("class_type")
        if kind not in MODEL_INPUTS:
            continue
        inputs = node.get("inputs", {})
        files = []
        for field, folder in MODEL_INPUTS[kind]:
            name = inputs.get(field)
            if not isinstance(name, str):
                continue
            path = resolve(folder, name)
            files.append({"name": name, "folder": folder, "sha256": hashes.sha256(path) if path else None})
        entry = {"class_type": kind, "files": files}
        entry.update({f: _literal(inputs[f]) for f in LORA_FIELDS if f in inputs})
        out[str(nid)] = entry
    return out


class HashCache:
    """sha256 of files, remembered per (path, size, mtime_ns) in a JSON file."""

    def __init__(self, cache_file: Optional[str]):
        self.cache_file = cache_file
        self._lock = threading.Lock()
        self._data: dict[str, str] = {}
        if cache_file and os.path.exists(cache_file):
            try:
                with open(cache_file, encoding="utf-8") as fh:
                    self._data = dict(json.load(fh))
            except (OSError, ValueError):
                self._data = {}  # a damaged cache only costs re-hashing

    def sha256(self, path: str) -> Optional[str]:
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
        with self._lock:
            if key in self._data:
                return self._data[key]
        value = sha256_file(path)
        with self._lock:
            self._data[key] = value
            self._save()
        return value

    def _save(self) -> None:
        if not self.cache_file:
            return
        os.makedirs(os.path.dirname(self.cache_file), exist_ok=True)
        tmp = f"{self.cache_file}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self._data, fh)
        os.replace(tmp, self.cache_file)
