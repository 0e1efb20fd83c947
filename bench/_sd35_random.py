"""Random-weight checkpoints in the shapes of SD3.5 Medium and Large, built with ComfyUI's own
classes so ComfyUI detects and runs them exactly like the real files (nothing is downloaded).

Run inside a process that can import ComfyUI (``sys.path`` holds the ComfyUI folder). Shapes:
- ``large``: MMDiT depth 38 (hidden 2432, 38 heads), 192x192 position grid, RMS q/k norm;
- ``medium``: MMDiT depth 24 (hidden 1536), 384x384 grid, RMS q/k norm, dual attention in blocks 0-12;
- ``tiny``: depth 2 (hidden 128), the tests' fixture shape, for the CPU dry run.
All with SD3's 16-channel KL VAE (the real 84 M-parameter decoder; ``tiny`` uses TAESD) and a
random clip_l as the only text encoder: the prompt is 77 tokens instead of SD3.5's 77 + 256 with
T5, so sampling here is slightly faster than with the real text stack, and the pack's share of the
time comes out slightly higher than it would be (a conservative figure).
"""
from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    name: str
    depth: int
    pos_embed_max_size: int
    dual_attention_blocks: int  # SD3.5 Medium's x_block_self_attn layers 0..N-1
    kl_vae: bool
    lora_rank: int

    @property
    def hidden(self) -> int:
        return 64 * self.depth  # ComfyUI's detection rule: hidden = 64 * depth, heads = depth


SHAPES = {
    "tiny": Shape("tiny", 2, 64, 0, kl_vae=False, lora_rank=4),
    "medium": Shape("medium", 24, 384, 13, kl_vae=True, lora_rank=16),
    "large": Shape("large", 38, 192, 0, kl_vae=True, lora_rank=16),
}

# SD3's VAE (comfy/sd.py builds this config when it sees 16 latent channels and no quant conv)
KL_DDCONFIG = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
               "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def build_mmdit(shape: Shape, device, dtype):
    import torch
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    model = MMDiT(
        patch_size=2, in_channels=16, out_channels=16, depth=shape.depth, adm_in_channels=2048,
        context_embedder_config={"target": "torch.nn.Linear",
                                 "params": {"in_features": 4096, "out_features": shape.hidden}},
        pos_embed_max_size=shape.pos_embed_max_size, num_patches=shape.pos_embed_max_size ** 2,
        qk_norm="rms" if shape.name != "tiny" else None,
        x_block_self_attn_layers=list(range(shape.dual_attention_blocks)),
        dtype=dtype, device=device, operations=comfy.ops.disable_weight_init,
    )
    with torch.no_grad():
        for p in model.parameters():  # disable_weight_init leaves the memory as it was
            p.normal_(0.0, 0.02)
    return model


def build_vae(shape: Shape, device, dtype):
    import torch

    if shape.kl_vae:
        from comfy.ldm.models.autoencoder import AutoencodingEngine

        vae = AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": KL_DDCONFIG},
            decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": KL_DDCONFIG})
    else:
        from comfy.taesd.taesd import TAESD

        vae = TAESD(latent_channels=16)
    vae = vae.to(device=device)
    with torch.no_grad():  # every parameter: ComfyUI's ops leave even GroupNorm's memory uninitialised
        for name, p in vae.named_parameters():
            if p.dim() > 1:
                torch.nn.init.kaiming_normal_(p, nonlinearity="relu")
                p.mul_(0.5)  # keeps a deep random decoder's activations finite
            elif name.endswith("weight"):
                p.fill_(1.0)   # norm scales
            else:
                p.zero_()      # biases
    return vae.to(dtype=dtype)


def build_clip_l(device, dtype):
    import torch
    from comfy.sd1_clip import SDClipModel

    clip = SDClipModel(device=device, dtype=dtype)
    with torch.no_grad():
        for p in clip.parameters():
            p.normal_(0.0, 0.02)
    return clip


def build_lora(shape: Shape) -> dict:
    """Diffusers-form LoRA on every joint block's q/k/v (what a trained SD3.5 LoRA targets)."""
    import torch

    g = torch.Generator().manual_seed(1)
    out = {}
    for n in range(shape.depth):
        for proj in ("to_q", "to_k", "to_v"):
            base = f"transformer.transformer_blocks.{n}.attn.{proj}"
            out[f"{base}.lora_A.weight"] = torch.randn(shape.lora_rank, shape.hidden, generator=g) * 0.01
            out[f"{base}.lora_B.weight"] = torch.randn(shape.hidden, shape.lora_rank, generator=g) * 0.01
    return {k: v.to(torch.bfloat16).contiguous() for k, v in out.items()}


def save_checkpoint(shape: Shape, path, device: str = "cpu", log=print) -> dict:
    """Build and save ``path`` (one safetensors file: MMDiT + VAE + clip_l); returns sizes and seconds."""
    import torch
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    torch.manual_seed(0)
    weights = torch.bfloat16 if device != "cpu" else torch.float16
    sd, params = {}, 0
    parts = (("model.diffusion_model.", lambda: build_mmdit(shape, device, weights)),
             ("first_stage_model.", lambda: build_vae(shape, device, weights)),
             ("text_encoders.clip_l.", lambda: build_clip_l(device, torch.float16)))
    for prefix, build in parts:
        module = build()
        for k, v in module.state_dict().items():
            sd[prefix + k] = v.detach().to("cpu").contiguous()
            params += v.numel()
        del module
    built = time.perf_counter() - t0
    tmp = str(path) + ".tmp"
    save_file(sd, tmp, metadata={"dtgen_random_shape": shape.name})
    import os

    os.replace(tmp, path)
    size = os.path.getsize(path)
    info = {"shape": shape.name, "params": params, "bytes": size, "build_s": built,
            "save_s": time.perf_counter() - t0 - built}
    log(f"  built {shape.name}: {params / 1e9:.2f} B parameters, {size / 2**30:.1f} GiB, "
        f"{info['build_s']:.1f} s to build + {info['save_s']:.1f} s to save")
    if device != "cpu":
        torch.cuda.empty_cache()
    return info


def save_lora(shape: Shape, path) -> None:
    import os

    from safetensors.torch import save_file

    tmp = str(path) + ".tmp"
    save_file(build_lora(shape), tmp)
    os.replace(tmp, path)


if __name__ == "__main__":  # python _sd35_random.py SHAPE CHECKPOINT LORA [--device cuda]; cwd = ComfyUI
    import os
    import sys

    sys.path.insert(0, os.getcwd())
    shape_name, ckpt, lora = sys.argv[1:4]
    device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
    if device == "cpu":
        from comfy.cli_args import args

        args.cpu = True  # before comfy.model_management is imported: no GPU probing
    save_checkpoint(SHAPES[shape_name], ckpt, device=device)
    save_lora(SHAPES[shape_name], lora)
