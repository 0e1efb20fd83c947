"""V3 adapter: ``DTGenTrainCheckpointLoader`` (ComfyUI only; the logic is in nodes/training/).

One checkpoint file, two views of its diffusion model: ``model`` as stored (for generation, with the
stock LoRA loaders) and ``train_model`` for the stock Train LoRA node (``trainable_model``). A file
TrainLoraNode cannot train is refused at queue time, before any photo is encoded, from its header.
"""
from __future__ import annotations

from comfy_api.latest import io, ui

from .off_loop import off_loop
from ..common.naming import category, node_id
from ..common.validation import linked

FOLDER = "checkpoints"


def checkpoint_path(name: str) -> str:
    import folder_paths

    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise ValueError(f"no checkpoint named {name!r} in models/{FOLDER} (press R to refresh the list after "
                         "adding a file)")
    return path


class DTGenTrainCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        names = folder_paths.get_filename_list(FOLDER) or ["sd3.5_large_fp8_scaled.safetensors"]
        return io.Schema(
            node_id=node_id("TrainCheckpointLoader"),
            display_name="DTGen Checkpoint Loader (train + generate)",
            category=category("training"),
            description=(
                "Loads a checkpoint once for LoRA training and generation. 'model' is the file as stored (for "
                "LoraModelLoader / LoraLoader and the sampler); 'train_model' is what the stock Train LoRA node "
                "trains. For scaled-fp8 files (sd3.5_large_fp8_scaled) each layer is dequantized before the "
                "LoRA, as the LoRA loaders apply it at generation, and the fp8 weights stay fp8 in memory. Files "
                "Train LoRA cannot train are refused when queued, naming the file and what to use instead."),
            inputs=[
                io.Combo.Input("ckpt_name", options=names, default=names[0],
                               tooltip="Checkpoint in models/checkpoints: SD3.5 with its text encoders inside "
                                       "(e.g. sd3.5_large_fp8_scaled.safetensors), or a bf16/fp16 one."),
            ],
            outputs=[
                io.Model.Output("model", display_name="model",
                                tooltip="The diffusion model as stored: for LoraModelLoader / LoraLoader and "
                                        "the sampler."),
                io.Clip.Output("clip", display_name="clip",
                               tooltip="The text encoders inside the file (None if it has none: wire a "
                                       "TripleCLIPLoader instead)."),
                io.Vae.Output("vae", display_name="vae", tooltip="The VAE inside the file."),
                io.Model.Output("train_model", display_name="train_model",
                                tooltip="For Train LoRA's model input only: scaled-fp8 layers dequantize before "
                                        "the LoRA. Not for LoraLoader (use 'model')."),
            ],
        )

    @classmethod
    async def validate_inputs(cls, ckpt_name) -> bool | str:
        return await off_loop(_check_checkpoint, ckpt_name)   # reads the safetensors header

    @classmethod
    def execute(cls, ckpt_name) -> io.NodeOutput:
        import nodes as comfy_nodes

        from ..training.checkpoint_format import checkpoint_format
        from .trainable_model import scaled_layers, trainable_view

        fmt = checkpoint_format(checkpoint_path(ckpt_name), read=_header)   # refused files never load
        model, clip, vae = comfy_nodes.CheckpointLoaderSimple().load_checkpoint(ckpt_name)[:3]
        view = trainable_view(model)
        text = fmt.line()
        if fmt.needs_view != (view is not model):   # header and loaded model disagree: say what was done
            text += f"\nloaded: {len(scaled_layers(model))} scaled layers, trainable view {'on' if view is not model else 'off'}"
        return io.NodeOutput(model, clip, vae, view, ui=ui.PreviewText(text))


def _check_checkpoint(ckpt_name) -> bool | str:
    from ..training.checkpoint_format import checkpoint_format
    from ..training.safetensors_header import HeaderError

    if linked(ckpt_name):
        return True
    try:
        checkpoint_format(checkpoint_path(ckpt_name), read=_header)
    except (HeaderError, ValueError) as exc:
        return f"DTGen Checkpoint Loader: {exc}"
    return True


NODES = [DTGenTrainCheckpointLoader]


# ------------------------------------------------------------------ does each LoRA fit its base?
_HEADERS: dict = {}   # (path, size, mtime_ns) -> header: read once for queue time, loading and the writer's check


def _header(path: str):
    import os

    from ..training.safetensors_header import read_header

    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _HEADERS:
        if len(_HEADERS) > 64:
            _HEADERS.clear()
        _HEADERS[key] = read_header(path)
    return _HEADERS[key]


def lora_misfits(prompt) -> tuple[list[str], list[str]]:
    """(errors, warnings) for the prompt's stock LoRA loaders: an error where the LoRA does not fit its
    base at all (shapes differ, or no layer of it exists in the model), a warning where part of it is
    missing. Files that are not safetensors, or cannot be found, are not checked."""
    import folder_paths

    from ..training.checkpoint_format import sd3_base, PREFIX
    from ..training.lora_fit import lora_fit, lora_pairs, misfit_message
    from ..training.safetensors_header import HeaderError

    errors, warnings = [], []
    for nid, lora_name, (folder, model_name) in lora_pairs(prompt):
        lora_path = folder_paths.get_full_path("loras", lora_name)
        model_path = folder_paths.get_full_path(folder, model_name)
        if not lora_path or not model_path or not all(p.endswith(".safetensors") for p in (lora_path, model_path)):
            continue
        try:
            lora, model = _header(lora_path), _header(model_path)
        except (HeaderError, OSError):
            continue   # the loader itself reports a file it cannot read
        fit = lora_fit(lora, model)
        prefix = PREFIX if any(k.startswith(PREFIX) for k in model) else ""
        message = misfit_message(lora_name, model_name, sd3_base(model, prefix)[0], fit)
        if message is None:
            continue
        whole = bool(fit.mismatched) or len(fit.missing) == fit.checked
        (errors if whole else warnings).append(f"node {nid}: {message}")
    return errors, warnings
