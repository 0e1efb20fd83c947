"""Which checkpoint files stock TrainLoraNode can train, told from the safetensors header alone.

Trainable: plain fp32 / fp16 / bf16 weights, fp8 weights (ComfyUI casts them up per layer), and
Comfy-Org's scaled-fp8 layout (``sd3.5_*_fp8_scaled``: fp8 weights + ``<layer>.scale_weight`` + the
``model.diffusion_model.scaled_fp8`` marker), which needs DTGen's trainable view (see
``adapters/trainable_model.py``). Refused, in one line naming the file and what to use instead: a
file with no diffusion model in it, and integer or packed quantisations (int8, NF4/bitsandbytes,
per-channel ``weight_scale`` layouts) whose weights TrainLoraNode cannot put gradients through.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..common.errors import PathProblem
from .safetensors_header import Tensor, read_header

PREFIX = "model.diffusion_model."
SCALED_FP8_MARKER = PREFIX + "scaled_fp8"
FLOAT_DTYPES = {"F64": "fp64", "F32": "fp32", "F16": "fp16", "BF16": "bf16"}
FP8_DTYPES = {"F8_E4M3": "fp8 e4m3", "F8_E5M2": "fp8 e5m2"}
# key suffixes of quantisations TrainLoraNode cannot train (bitsandbytes / NF4, torchao, mixed-precision)
PACKED_SUFFIXES = (".absmax", ".quant_map", ".quant_state", ".SCB", ".weight_format", ".weight_scale",
                   ".comfy_quant", ".nested_absmax", ".qweight")
TEXT_ENCODERS = ("clip_l", "clip_g", "t5xxl")
USE_INSTEAD = ("use sd3.5_large_fp8_scaled.safetensors (Comfy-Org, text encoders inside) or Stability AI's "
               "bf16/fp16 sd3.5_large.safetensors in models/checkpoints")


class CheckpointFormatError(PathProblem, ValueError):
    """TrainLoraNode cannot train this file; the message names the file and what to use instead."""

    NAME_ONLY = True

    def __init__(self, path, problem: str):
        super().__init__(path, f"{problem}; {USE_INSTEAD}")


@dataclass(frozen=True)
class CheckpointFormat:
    name: str
    storage: str              # "scaled fp8", "fp8 e4m3", "bf16", "fp16", "fp32", "mixed fp16/bf16", ...
    scaled_layers: int        # layers with a scale_weight (scaled fp8 only)
    base: str                 # "SD3.5 Large", "SD3.5 Medium", "SD3 Medium", "MMDiT depth 2", "not SD3"
    depth: int | None
    text_encoders: tuple      # of TEXT_ENCODERS found inside
    has_vae: bool

    @property
    def needs_view(self) -> bool:
        """Scaled layers: TrainLoraNode trains them only through the dequantizing view."""
        return self.scaled_layers > 0

    def line(self) -> str:
        te = ", ".join(self.text_encoders) or "none (wire a TripleCLIPLoader)"
        how = (f"trained through DTGen's dequantizing view ({self.scaled_layers} scaled layers, fp8 kept in memory)"
               if self.needs_view else "trained as stored")
        return (f"{self.name}: {self.base}, {self.storage}; {how}; text encoders inside: {te}; "
                f"VAE inside: {'yes' if self.has_vae else 'no'}")


def sd3_base(tensors: dict[str, Tensor], prefix: str = PREFIX) -> tuple[str, int | None]:
    """(name, depth) of an MMDiT diffusion model (ComfyUI's rule: depth = x_embedder width / 64)."""
    if f"{prefix}joint_blocks.0.context_block.attn.qkv.weight" not in tensors:
        return "not SD3", None
    embed = tensors.get(f"{prefix}x_embedder.proj.weight")
    depth = embed.shape[0] // 64 if embed is not None and embed.shape else None
    mmdit_x = f"{prefix}joint_blocks.0.x_block.attn2.qkv.weight" in tensors
    names = {38: "SD3.5 Large", 24: "SD3.5 Medium" if mmdit_x else "SD3 Medium"}
    return names.get(depth, f"MMDiT depth {depth}"), depth


def classify(name: str, tensors: dict[str, Tensor]) -> CheckpointFormat:
    """The format of a checkpoint's header; ``CheckpointFormatError`` where TrainLoraNode cannot train it."""
    diffusion = {k: t for k, t in tensors.items() if k.startswith(PREFIX)}
    if not diffusion:
        raise CheckpointFormatError(name, "holds no diffusion model (no model.diffusion_model.* tensors): it is a "
                                          "text encoder, VAE, LoRA or diffusion-only file, not a checkpoint")
    packed = sorted(k for k in diffusion if k.endswith(PACKED_SUFFIXES))
    if packed:
        raise CheckpointFormatError(name, f"stores its diffusion model in a packed quantisation (e.g. {packed[0]}), "
                                          "which TrainLoraNode cannot train")
    weights = {k: t for k, t in diffusion.items() if k.endswith(".weight") and len(t.shape) >= 2}
    odd = sorted(k for k, t in weights.items() if t.dtype not in FLOAT_DTYPES and t.dtype not in FP8_DTYPES)
    if odd:
        raise CheckpointFormatError(name, f"stores diffusion-model weights as {weights[odd[0]].dtype} (e.g. {odd[0]}), "
                                          "an integer quantisation TrainLoraNode cannot train")
    scales = [k for k in diffusion if k.endswith(".scale_weight")]
    kinds = sorted({FLOAT_DTYPES.get(t.dtype) or FP8_DTYPES[t.dtype] for t in weights.values()})
    if SCALED_FP8_MARKER in tensors:
        storage = "scaled fp8"
    elif any(k in FP8_DTYPES.values() for k in kinds):
        storage = next(k for k in kinds if k in FP8_DTYPES.values())
    else:
        storage = kinds[0] if len(kinds) == 1 else "mixed " + "/".join(kinds)
    base, depth = sd3_base(tensors)
    inside = tuple(te for te in TEXT_ENCODERS if any(k.startswith(f"text_encoders.{te}.") for k in tensors))
    has_vae = any(k.startswith("first_stage_model.") for k in tensors)
    return CheckpointFormat(name, storage, len(scales) if storage == "scaled fp8" else 0, base, depth, inside, has_vae)


def checkpoint_format(path, read=read_header) -> CheckpointFormat:
    """``classify`` of a file; only ``.safetensors`` headers can be read without loading weights.
    ``read(path)`` gives the header (a caller with a cache passes its own)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return CheckpointFormat(path.name, "unknown (not .safetensors: read only when loaded)", 0,
                                "unknown", None, (), True)
    return classify(path.name, read(path))
