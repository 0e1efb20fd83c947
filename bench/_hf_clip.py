"""DTGen's own CLIP filter procedure, for the benches: a transformers ``CLIPModel`` + ``CLIPProcessor``
holding the same weights as an open_clip model, saved to a folder and loaded back with
``from_pretrained`` exactly as DTGen's ``scripts/filter_unmatched_images.py`` loads
``openai/clip-vit-base-patch32`` (no network: the folder is written here).

- ``save_hf_clip(open_clip_model, folder)``: converts the state (open_clip's OpenAI-style names ->
  transformers' names; fused qkv split; projections transposed), writes the config (GELU, as
  open_clip's ViT-B-32 without QuickGELU), the tokenizer (open_clip's own BPE vocab and merges, the
  same token ids) and the image processor with the openai/clip-vit-base-patch32 preprocessing
  (shortest side 224 bicubic, centre crop 224, OpenAI mean/std).
- ``dtgen_filter_loop(model, processor, sources, prompts)``: the script's pass 1 as it is written:
  per image ``Image.open(file).convert("RGB")`` (or ``Image.fromarray`` for the "from arrays"
  case), ``processor(text=[prompt], images=image, return_tensors="pt", padding=True)``,
  ``model(**inputs)`` under ``torch.no_grad()``, score = ``image_embeds @ text_embeds.T``. Its
  per-image ``print`` and the later ``shutil.move`` are left out (I/O, not scoring).
"""
from __future__ import annotations

import json
from pathlib import Path


def _hf_state(oc_state: dict, vision_layers: int, text_layers: int) -> dict:
    out = {}

    def block(src: str, dst: str) -> None:
        w = oc_state[f"{src}.attn.in_proj_weight"]
        b = oc_state[f"{src}.attn.in_proj_bias"]
        for name, wp, bp in zip(("q", "k", "v"), w.chunk(3), b.chunk(3)):
            out[f"{dst}.self_attn.{name}_proj.weight"] = wp.clone()
            out[f"{dst}.self_attn.{name}_proj.bias"] = bp.clone()
        pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                 "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
        for a, b_ in pairs.items():
            for p in ("weight", "bias"):
                out[f"{dst}.{b_}.{p}"] = oc_state[f"{src}.{a}.{p}"].clone()

    out["text_model.embeddings.token_embedding.weight"] = oc_state["token_embedding.weight"]
    out["text_model.embeddings.position_embedding.weight"] = oc_state["positional_embedding"]
    for i in range(text_layers):
        block(f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}")
    for p in ("weight", "bias"):
        out[f"text_model.final_layer_norm.{p}"] = oc_state[f"ln_final.{p}"]
        out[f"vision_model.pre_layrnorm.{p}"] = oc_state[f"visual.ln_pre.{p}"]
        out[f"vision_model.post_layernorm.{p}"] = oc_state[f"visual.ln_post.{p}"]
    out["text_projection.weight"] = oc_state["text_projection"].t().contiguous()
    out["vision_model.embeddings.patch_embedding.weight"] = oc_state["visual.conv1.weight"]
    out["vision_model.embeddings.class_embedding"] = oc_state["visual.class_embedding"]
    out["vision_model.embeddings.position_embedding.weight"] = oc_state["visual.positional_embedding"]
    for i in range(vision_layers):
        block(f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}")
    out["visual_projection.weight"] = oc_state["visual.proj"].t().contiguous()
    out["logit_scale"] = oc_state["logit_scale"].reshape(())
    return out


def save_hf_clip(oc_model, folder: Path) -> Path:
    """Write ``oc_model`` (an open_clip ViT CLIP, GELU) as a transformers CLIP folder; returns it."""
    import open_clip
    import torch
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    visual, state = oc_model.visual, oc_model.state_dict()
    width = visual.conv1.out_channels
    vision_layers = len(visual.transformer.resblocks)
    text_width = oc_model.token_embedding.weight.shape[1]
    text_layers = len(oc_model.transformer.resblocks)
    config = CLIPConfig(
        text_config={"vocab_size": oc_model.token_embedding.weight.shape[0], "hidden_size": text_width,
                         "intermediate_size": oc_model.transformer.resblocks[0].mlp.c_fc.out_features,
                         "num_attention_heads": oc_model.transformer.resblocks[0].attn.num_heads,
                         "num_hidden_layers": text_layers, "max_position_embeddings": oc_model.positional_embedding.shape[0],
                         "hidden_act": "gelu", "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
                         "projection_dim": oc_model.text_projection.shape[1]},
        vision_config={"hidden_size": width, "intermediate_size": visual.transformer.resblocks[0].mlp.c_fc.out_features,
                           "num_attention_heads": visual.transformer.resblocks[0].attn.num_heads,
                           "num_hidden_layers": vision_layers, "image_size": visual.image_size[0],
                           "patch_size": visual.conv1.kernel_size[0], "hidden_act": "gelu",
                           "projection_dim": visual.proj.shape[1]},
        projection_dim=visual.proj.shape[1])
    model = CLIPModel(config).eval()
    missing, unexpected = model.load_state_dict(_hf_state(state, vision_layers, text_layers), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"conversion left keys out: missing {missing[:4]}, unexpected {unexpected[:4]}")
    model.save_pretrained(folder)

    bpe = SimpleTokenizer()
    vocab = {k.replace("<start_of_text>", "<|startoftext|>").replace("<end_of_text>", "<|endoftext|>"): v
             for k, v in bpe.encoder.items()}
    merges = [" ".join(pair) for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], model_max_length=77)
    images = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                do_center_crop=True, do_resize=True, do_normalize=True, do_convert_rgb=True,
                                resample=3, image_mean=list(open_clip.OPENAI_DATASET_MEAN),
                                image_std=list(open_clip.OPENAI_DATASET_STD))
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    del torch
    return folder


def load_hf_clip(folder: Path):
    """``CLIPModel.from_pretrained`` / ``CLIPProcessor.from_pretrained`` on the folder, as DTGen does."""
    from transformers import CLIPModel, CLIPProcessor

    return CLIPModel.from_pretrained(str(folder)).to("cpu").eval(), CLIPProcessor.from_pretrained(str(folder))


def check_same_model(oc_model, hf_model, processor, oc_tokenizer, pixels, text: str) -> dict:
    """Image and text embeddings of both models on the same inputs: cosine (same weights -> ~1)."""
    import torch

    with torch.no_grad():
        a = oc_model.encode_image(pixels)
        b = hf_model.get_image_features(pixel_values=pixels)
        b = getattr(b, "pooler_output", b)
        ta = oc_model.encode_text(oc_tokenizer([text]))
        ids = processor(text=[text], return_tensors="pt", padding=True)
        tb = hf_model.get_text_features(**ids)
        tb = getattr(tb, "pooler_output", tb)
    cos = torch.nn.functional.cosine_similarity
    return {"image_cosine_min": float(cos(a, b, dim=-1).min()), "text_cosine": float(cos(ta, tb, dim=-1)[0]),
            "same_tokens": oc_tokenizer([text])[0][:ids["input_ids"].shape[1]].tolist() == ids["input_ids"][0].tolist()}


def dtgen_filter_loop(model, processor, sources, prompts) -> list[float]:
    """DTGen's pass 1 (see the module docstring). ``sources``: PNG paths (Image.open(...).convert("RGB"))
    or uint8 H x W x 3 arrays (Image.fromarray(...).convert("RGB"), the arrays case)."""
    import numpy as np
    import torch
    from PIL import Image

    scores = []
    for src, prompt in zip(sources, prompts):
        image = Image.fromarray(src).convert("RGB") if isinstance(src, np.ndarray) else Image.open(src).convert("RGB")
        inputs = processor(text=[prompt], images=image, return_tensors="pt", padding=True).to("cpu")
        with torch.no_grad():
            outputs = model(**inputs)
        scores.append((outputs.image_embeds @ outputs.text_embeds.T).item())
    return scores
