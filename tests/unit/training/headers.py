"""Header-only safetensors files: the layout of a real checkpoint or LoRA without its gigabytes (the
header reader never looks past the header)."""
from __future__ import annotations

import json
import struct


def write_header(path, tensors: dict, metadata: dict | None = None):
    """``tensors``: {name: (dtype, shape)} in safetensors' dtype spelling."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset]}
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def mmdit(depth: int, dtype: str = "BF16", prefix: str = "model.diffusion_model.", scaled: bool = False,
          mmdit_x: bool = False) -> dict:
    """The weight layout of an SD3-family MMDiT of ``depth`` (hidden = 64 x depth), as ComfyUI names it."""
    h = 64 * depth
    t = {f"{prefix}x_embedder.proj.weight": (dtype if not scaled else "BF16", (h, 16, 2, 2)),
         f"{prefix}context_embedder.weight": (dtype, (h, 4096))}
    for i in range(depth):
        for block in ("x_block", "context_block"):
            b = f"{prefix}joint_blocks.{i}.{block}."
            t.update({b + "attn.qkv.weight": (dtype, (3 * h, h)), b + "attn.proj.weight": (dtype, (h, h)),
                      b + "mlp.fc1.weight": (dtype, (4 * h, h)), b + "mlp.fc2.weight": (dtype, (h, 4 * h)),
                      b + "adaLN_modulation.1.weight": (dtype, (6 * h, h)), b + "attn.qkv.bias": ("BF16", (3 * h,))})
        if mmdit_x:
            t[f"{prefix}joint_blocks.{i}.x_block.attn2.qkv.weight"] = (dtype, (3 * h, h))
    if scaled:
        for k in [k for k, (_, s) in t.items() if k.endswith(".weight") and len(s) == 2]:
            t[k[: -len("weight")] + "scale_weight"] = ("F32", ())
        t[prefix + "scaled_fp8"] = ("F8_E4M3", (0,))
    return t


def checkpoint(depth: int, dtype: str = "BF16", scaled: bool = False, text_encoders=("clip_l",), vae=True) -> dict:
    t = mmdit(depth, dtype, scaled=scaled)
    for te in text_encoders:
        t[f"text_encoders.{te}.transformer.text_model.final_layer_norm.weight"] = ("F16", (768,))
    if vae:
        t["first_stage_model.decoder.conv_in.weight"] = ("F16", (512, 16, 3, 3))
    return t


def train_lora(depth: int, rank: int = 4, blocks=None) -> dict:
    """What TrainLoraNode saves for an MMDiT of ``depth``: diffusion_model.<layer>.lora_up/down."""
    h = 64 * depth
    t = {}
    for i in (range(depth) if blocks is None else blocks):
        for block in ("x_block", "context_block"):
            for layer, (out, inp) in {"attn.qkv": (3 * h, h), "mlp.fc1": (4 * h, h)}.items():
                stem = f"diffusion_model.joint_blocks.{i}.{block}.{layer}"
                t[stem + ".lora_up.weight"] = ("F32", (out, rank))
                t[stem + ".lora_down.weight"] = ("F32", (rank, inp))
                t[stem + ".alpha"] = ("F32", ())
            t[f"diffusion_model.joint_blocks.{i}.{block}.attn.qkv.diff_b"] = ("F32", (3 * h,))
    return t
