"""Build a tiny random-weight SD3 checkpoint, a matching LoRA and a random open_clip model, for
the tests and the demo (``python -m runner demo`` when the real weights are absent).

Run with ComfyUI importable (``cwd`` = the ComfyUI folder):
    python demo_models.py <out_dir>                  tiny_sd3(.safetensors), its scaled-fp8 twin, tiny_sd3_lora
    python demo_models.py --clip ViT-B-32 <file>     random-init open_clip model as safetensors
``tiny_sd3.safetensors``: MMDiT depth 2, TAESD-shaped VAE, clip_l only (fp16);
``tiny_sd3_fp8_scaled.safetensors``: the same weights in the layout of Comfy-Org's
``sd3.5_*_fp8_scaled`` files (the checkpoint the templates name); ``tiny_sd3_lora.safetensors``:
diffusers-form and kohya-form MMDiT keys plus a text-encoder key. Built from ComfyUI's own classes
so ComfyUI detects them as SD3. Nothing is downloaded; the pictures they make are noise.
"""
from __future__ import annotations

import os
import sys

DEPTH = 2            # hidden = 64 * depth, heads = depth (ComfyUI's detection rule)
HIDDEN = 64 * DEPTH
LORA_RANK = 4
BUILD_VERSION = "4"  # bump to invalidate cached fixtures


CHECKPOINT = "tiny_sd3.safetensors"
CHECKPOINT_FP8_SCALED = "tiny_sd3_fp8_scaled.safetensors"
LORA = "tiny_sd3_lora.safetensors"


def build_checkpoint() -> dict:
    import torch
    from comfy.cli_args import args

    args.cpu = True  # before comfy.model_management is imported: no GPU probing
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
    from comfy.sd1_clip import SDClipModel
    from comfy.taesd.taesd import TAESD

    torch.manual_seed(0)
    mmdit = MMDiT(
        patch_size=2, in_channels=16, out_channels=16, depth=DEPTH,
        adm_in_channels=2048,  # fixed by SD3's pooled text (clip_l 768 + clip_g 1280)
        context_embedder_config={"target": "torch.nn.Linear",
                                 "params": {"in_features": 4096, "out_features": HIDDEN}},
        pos_embed_max_size=64, num_patches=64 * 64,  # 64x64 patches -> up to 1024 px
        operations=comfy.ops.disable_weight_init,
    )
    for p in mmdit.parameters():  # disable_weight_init leaves memory uninitialised
        torch.nn.init.normal_(p, std=0.02)
    vae = TAESD(latent_channels=16)
    _default_init(vae)
    _visible_decoder(vae)
    clip = SDClipModel(device="cpu", dtype=torch.float16)
    for p in clip.parameters():
        torch.nn.init.normal_(p, std=0.02)

    sd: dict[str, torch.Tensor] = {}
    for k, v in mmdit.state_dict().items():
        sd["model.diffusion_model." + k] = v.to(torch.float16)
    for k, v in vae.state_dict().items():
        sd["first_stage_model." + k] = v.to(torch.float16)
    for k, v in clip.state_dict().items():
        sd["text_encoders.clip_l." + k] = v.to(torch.float16)
    return {k: v.contiguous() for k, v in sd.items()}


FP8_MAX = 448.0   # largest finite float8_e4m3fn


def to_scaled_fp8(sd: dict) -> dict:
    """The checkpoint in Comfy-Org's scaled-fp8 layout, as ``sd3.5_large_fp8_scaled.safetensors``
    stores it: every 2-D diffusion-model weight as ``float8_e4m3fn`` with a float32 scalar
    ``<layer>.scale_weight`` (max|w| / 448), and the empty fp8 marker ``model.diffusion_model.scaled_fp8``
    (0 elements: ComfyUI also turns on its fp8 input-scale path, as for the real file). ComfyUI reads it
    in ``comfy/model_detection.py`` and ``comfy.ops.scaled_fp8_ops``. Text encoders and VAE stay fp16."""
    import torch

    out: dict = {}
    prefix = "model.diffusion_model."
    for k, v in sd.items():
        if k.startswith(prefix) and k.endswith(".weight") and v.dim() == 2:
            w = v.float()
            scale = (w.abs().max() / FP8_MAX).clamp_min(1e-12)
            out[k] = (w / scale).to(torch.float8_e4m3fn)
            out[k[: -len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            out[k] = v
    out[prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return {k: v.contiguous() for k, v in out.items()}


def _default_init(module) -> None:
    """He init for conv/linear layers (ComfyUI's ops leave memory uninitialised)."""
    import torch

    for m in module.modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() > 1:
            torch.nn.init.kaiming_normal_(w, nonlinearity="relu")
            if isinstance(getattr(m, "bias", None), torch.Tensor):
                torch.nn.init.zeros_(m.bias)


def _visible_decoder(vae) -> None:
    """Rescale the decoder's last conv so random latents decode to mid-grey +- 0.25, not black:
    images must differ visibly when the latent differs (the LoRA test compares pixels)."""
    import torch

    last = [m for m in vae.taesd_decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.bias.zero_()
        out = vae.taesd_decoder(torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(2)))
        last.weight.mul_(0.25 / out.std().clamp_min(1e-6))
        last.bias.fill_(0.5)


def build_lora() -> dict:
    import torch

    g = torch.Generator().manual_seed(1)

    def pair(out_f: int, in_f: int) -> tuple:
        down = torch.randn(LORA_RANK, in_f, generator=g) * 0.5
        up = torch.randn(out_f, LORA_RANK, generator=g) * 0.5
        return down, up

    lora: dict[str, torch.Tensor] = {}
    for n in range(DEPTH):  # diffusers form
        for proj in ("to_q", "to_k", "to_v", "add_q_proj"):
            down, up = pair(HIDDEN, HIDDEN)
            base = f"transformer.transformer_blocks.{n}.attn.{proj}"
            lora[f"{base}.lora_A.weight"] = down
            lora[f"{base}.lora_B.weight"] = up
    for n in range(DEPTH):  # kohya form
        down, up = pair(HIDDEN * 4, HIDDEN)
        base = f"lora_unet_joint_blocks_{n}_x_block_mlp_fc1"
        lora[f"{base}.lora_down.weight"] = down
        lora[f"{base}.lora_up.weight"] = up
        lora[f"{base}.alpha"] = torch.tensor(float(LORA_RANK))
    down, up = pair(768, 768)  # text encoder (clip_l)
    base = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    lora[f"{base}.lora_down.weight"] = down
    lora[f"{base}.lora_up.weight"] = up
    lora[f"{base}.alpha"] = torch.tensor(float(LORA_RANK))
    return {k: v.to(torch.float16).contiguous() for k, v in lora.items()}


def build_open_clip(arch: str, path: str) -> None:
    """A random-init open_clip model of the real architecture, saved as safetensors."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    tmp = path + ".tmp"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)


def main(out_dir: str) -> None:
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    checkpoint = build_checkpoint()
    for name, tensors in ((CHECKPOINT, checkpoint), (CHECKPOINT_FP8_SCALED, to_scaled_fp8(checkpoint)),
                          (LORA, build_lora())):
        path = os.path.join(out_dir, name)
        tmp = path + ".tmp"
        save_file(tensors, tmp, metadata={"dtgen_fixture": BUILD_VERSION})
        os.replace(tmp, path)  # a killed build never leaves a half file under the real name
    print(out_dir)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))   # runner/: its ray/ and demo/ packages must not shadow
    sys.path[:] = [os.getcwd()] + [p for p in sys.path if os.path.abspath(p or ".") != here]
    if sys.argv[1] == "--clip":
        build_open_clip(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1])
