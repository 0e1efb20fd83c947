"""A view of a loaded diffusion model that stock TrainLoraNode can train (ComfyUI only).

Why: in a scaled-fp8 checkpoint (Comfy-Org's ``sd3.5_*_fp8_scaled``) every Linear keeps its weight as
float8 plus a scalar ``scale_weight``. Stock TrainLoraNode fails on it (the scale tensors were made
under inference mode and enter the autograd graph), and even if it ran, its adapter would act on the
stored fp8 weight *before* the scale multiplies it, while LoraLoader / LoraModelLoader patch the
dequantized weight: the LoRA would be about 1/scale times stronger at generation than in training.

The view changes neither the weights nor the shared model: it is a ModelPatcher clone (the mechanism
TrainLoraNode itself uses) whose scaled Linears dequantize first (weight x scale, a weight wrapper
placed before the training adapter) and then run a plain linear. Training therefore sees
``W x scale + delta``, exactly what the LoRA loaders patch at generation, and the fp8 weights stay
fp8 in memory (no bf16 copy). Models without scaled layers are returned as they are.
"""
from __future__ import annotations


class Dequantize:
    """Weight wrapper: the stored weight times its scale (a plain tensor made outside inference
    mode, so autograd may save it)."""

    def __init__(self, scale):
        self.scale = scale

    def __call__(self, weight):
        return weight * self.scale.to(device=weight.device, dtype=weight.dtype)

    def move_to(self, device=None):
        if device is not None:
            self.scale = self.scale.to(device)
        return 0   # a scalar: no memory worth counting


def scaled_layers(model) -> list[tuple[str, object]]:
    """(name, module) of every layer that keeps a scale beside its weight."""
    import torch

    return [(name, m) for name, m in model.model.named_modules()
            if isinstance(getattr(m, "scale_weight", None), torch.Tensor) and getattr(m, "weight", None) is not None]


def trainable_view(model):
    """``model`` itself when nothing is scaled, else a clone whose scaled layers dequantize before any
    weight wrapper TrainLoraNode adds."""
    import types

    import torch
    import comfy.ops

    layers = scaled_layers(model)
    if not layers:
        return model
    view = model.clone()
    plain_forward = comfy.ops.disable_weight_init.Linear.forward_comfy_cast_weights
    with torch.inference_mode(False):
        for name, module in layers:
            scale = module.scale_weight.detach().to(dtype=torch.float32).clone()
            view.add_weight_wrapper(f"{name}.weight", Dequantize(scale))
            view.add_object_patch(f"{name}.forward_comfy_cast_weights", types.MethodType(plain_forward, module))
    return view
