"""Does a LoRA fit the diffusion model it is applied to? Told from both files' headers.

ComfyUI applies a LoRA made for another base (a Medium LoRA on Large) without failing the run: the
layers that do not match are skipped with ``lora key not loaded`` or a shape error in the server
log, and the images come out as if no LoRA were there. This check compares every LoRA layer it can
map (TrainLoraNode's ``diffusion_model.<layer>.lora_up/lora_down/diff`` keys and kohya's
``lora_unet_<layer>``) with the model's weight shape, and says in one message what does not fit.
Diffusers-named keys (``transformer.*``) and LoHa/LoKr/OFT factors are counted as unchecked.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from math import prod

from .checkpoint_format import PREFIX
from .safetensors_header import Tensor

BASES = {38: "SD3.5 Large", 24: "SD3.5 / SD3 Medium"}


@dataclass
class LoraFit:
    checked: int = 0
    mismatched: list = field(default_factory=list)   # (layer, lora (out, in), model (out, in))
    missing: list = field(default_factory=list)      # layers the model lacks
    unchecked: int = 0
    lora_width: int | None = None                    # the MMDiT width the LoRA's attention layers expect

    @property
    def fits(self) -> bool:
        return not self.mismatched and not self.missing


def model_layers(tensors: dict[str, Tensor]) -> dict[str, tuple]:
    """{layer: (out, in)} of every >= 2-D weight of a checkpoint (``model.diffusion_model.``) or of a
    diffusion-model-only file."""
    prefix = PREFIX if any(k.startswith(PREFIX) for k in tensors) else ""
    return {k[len(prefix):-len(".weight")]: (t.shape[0], prod(t.shape[1:]))
            for k, t in tensors.items()
            if k.startswith(prefix) and k.endswith(".weight") and len(t.shape) >= 2}


def _lora_layers(lora: dict[str, Tensor], kohya: dict[str, str]) -> tuple[dict[str, tuple], int]:
    """{layer: (out, in)} the LoRA patches, and how many of its keys could not be mapped."""
    parts: dict[str, dict] = {}
    unchecked = 0
    for key, t in lora.items():
        for suffix in (".lora_up.weight", ".lora_down.weight", ".diff"):
            if key.endswith(suffix):
                stem = key[: -len(suffix)]
                break
        else:
            if not key.endswith((".alpha", ".diff_b", ".dora_scale")):
                unchecked += 1
            continue
        if stem.startswith("diffusion_model."):
            layer = stem[len("diffusion_model."):]
        elif stem.startswith("lora_unet_") and stem in kohya:
            layer = kohya[stem]
        elif stem.startswith("lora_unet_"):
            layer = stem   # a kohya name the model has no layer for
        else:
            unchecked += 1
            continue
        parts.setdefault(layer, {})[suffix] = t.shape
    shapes = {}
    for layer, p in parts.items():
        if ".diff" in p:
            shape = p[".diff"]
            shapes[layer] = (shape[0], prod(shape[1:]))
        elif ".lora_up.weight" in p and ".lora_down.weight" in p:
            shapes[layer] = (p[".lora_up.weight"][0], prod(p[".lora_down.weight"][1:]))
        else:
            unchecked += 1
    return shapes, unchecked


def lora_fit(lora: dict[str, Tensor], model: dict[str, Tensor]) -> LoraFit:
    layers = model_layers(model)
    kohya = {"lora_unet_" + layer.replace(".", "_"): layer for layer in layers}
    shapes, unchecked = _lora_layers(lora, kohya)
    fit = LoraFit(checked=len(shapes), unchecked=unchecked)
    for layer, shape in sorted(shapes.items()):
        if layer not in layers:
            fit.missing.append(layer)
        elif layers[layer] != shape:
            fit.mismatched.append((layer, shape, layers[layer]))
    widths = Counter(shape[1] for layer, shape in shapes.items() if layer.endswith("attn.qkv"))
    fit.lora_width = widths.most_common(1)[0][0] if widths else None
    return fit


def misfit_message(lora_name: str, model_name: str, model_base: str, fit: LoraFit) -> str | None:
    """One message for the user, or None when the LoRA fits (or nothing could be checked)."""
    if fit.fits or not fit.checked:
        return None
    said = []
    if fit.mismatched:
        layer, (lo, li), (mo, mi) = fit.mismatched[0]
        said.append(f"{len(fit.mismatched)} of its {fit.checked} layers differ in shape (e.g. {layer}: "
                    f"LoRA {lo}x{li}, model {mo}x{mi})")
    if fit.missing:
        said.append(f"{len(fit.missing)} name layers the model lacks (e.g. {fit.missing[0]})")
    made_for = ""
    if fit.lora_width:
        depth = fit.lora_width // 64
        made_for = f"; it was made for an MMDiT of width {fit.lora_width} (depth {depth}: {BASES.get(depth, 'another base')})"
    return (f"LoRA {lora_name} does not fit {model_name} ({model_base}): {' and '.join(said)}{made_for}. "
            f"ComfyUI would skip those layers and the images would show no LoRA: train the LoRA on this "
            f"checkpoint (template dtgen_sd35_train_lora) or load the base it was trained on")


# Where a LoRA loader's model comes from, in an API-format prompt.
LORA_LOADERS = {"LoraLoader": "lora_name", "LoraLoaderModelOnly": "lora_name"}
MODEL_SOURCES = {"CheckpointLoaderSimple": ("ckpt_name", "checkpoints"),
                 "CheckpointLoader": ("ckpt_name", "checkpoints"),
                 "DTGenTrainCheckpointLoader": ("ckpt_name", "checkpoints"),
                 "UNETLoader": ("unet_name", "diffusion_models")}
MAX_HOPS = 64


def lora_pairs(prompt: dict | None) -> list[tuple[str, str, tuple]]:
    """(loader node id, LoRA file name, (model folder, model file name)) for every stock LoRA loader
    whose ``model`` input leads, through other model nodes, to a file loader."""
    out = []
    for nid, node in (prompt or {}).items():
        field_name = LORA_LOADERS.get(node.get("class_type"))
        lora = (node.get("inputs") or {}).get(field_name) if field_name else None
        if not isinstance(lora, str):
            continue
        source = _model_source(prompt, (node.get("inputs") or {}).get("model"))
        if source is not None:
            out.append((str(nid), lora, source))
    return out


def _model_source(prompt: dict, link) -> tuple | None:
    for _ in range(MAX_HOPS):
        if not (isinstance(link, list) and len(link) == 2):
            return None
        node = prompt.get(str(link[0])) or {}
        inputs = node.get("inputs") or {}
        if node.get("class_type") in MODEL_SOURCES:
            field_name, folder = MODEL_SOURCES[node["class_type"]]
            name = inputs.get(field_name)
            return (folder, name) if isinstance(name, str) else None
        link = inputs.get("model")
    return None
