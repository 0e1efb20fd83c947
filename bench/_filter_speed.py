"""CLIP image-encoder throughput: the pack's batched on-device path vs DTGen's one-image loop.

DTGen's reference filter preprocesses each image with PIL (open_clip's transform) and calls
``encode_image`` on one image at a time in fp32. The pack hands a whole batch of ComfyUI images
(float tensors, 1024², as VAEDecode returns them) to the model's device, resizes and normalises
there, and on CUDA runs the encoder in fp16. Random weights of the real architecture: throughput
does not depend on the values. Prints one JSON line (last line of stdout) for gpu_check.py.

    python bench/_filter_speed.py --device cuda|cpu [--arch ViT-B-32] [--images 512] [--loop-images 64]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pkg import load_package  # noqa: E402

load_package()


def photos(n: int, side: int = 1024):
    """``n`` real photos (scikit-image) at side x side as one ComfyUI IMAGE batch (B, H, W, 3) in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image
    try:
        from skimage import data

        base = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    except Exception:  # no scikit-image photos on this machine: smooth random fields (labelled as such)
        rng = np.random.default_rng(0)
        base = [np.asarray(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).resize((512, 512)))
                for _ in range(4)]
    out = []
    for i in range(n):
        img = Image.fromarray(base[i % len(base)]).resize((side, side), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        out.append(np.roll(arr, shift=i * 7, axis=1))  # no two images alike
    return torch.from_numpy(np.stack(out))


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def dtgen_loop(model, preprocess, images, device: str) -> tuple[float, "object"]:
    """One image per call: tensor -> PIL -> open_clip transform -> encode_image (fp32)."""
    import torch
    from PIL import Image

    feats = []
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for img in images:
            pil = Image.fromarray((img.numpy() * 255).round().astype("uint8"))
            x = preprocess(pil).unsqueeze(0).to(device)
            f = model.encode_image(x)
            feats.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
    sync(device)
    return time.perf_counter() - t0, torch.cat(feats)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--loop-images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    import open_clip
    import torch

    from dtgen.nodes.scoring import similarity
    from dtgen.nodes.scoring.clip_model import load_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(args.arch, pretrained=None)
    weights = Path(f"/tmp/dtgen-filter-speed-{args.arch}.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    model = model.to(args.device).eval()
    images = photos(args.images)
    lines, result = [], {"arch": args.arch, "device": args.device}

    # DTGen's loop (fp32, one image per call); one warm-up call first
    dtgen_loop(model, preprocess, images[:2], args.device)
    t_loop, f_loop = dtgen_loop(model, preprocess, images[: args.loop_images], args.device)
    loop_rate = args.loop_images / t_loop
    result["dtgen_loop_images_per_s"] = loop_rate
    lines.append(f"DTGen one-image loop (PIL preprocessing, fp32): {loop_rate:8.1f} images/s ({args.loop_images} images)")
    del model

    # the pack's path: whatever precision "auto" picks on this device, then fp32 for the cosine
    for precision in ("auto", "fp32"):
        bundle = load_clip(args.arch, str(weights), device=args.device, precision=precision)
        similarity.encode_images(bundle, images[: args.batch], batch_size=args.batch)  # warm-up
        sync(args.device)
        t0 = time.perf_counter()
        emb = similarity.encode_images(bundle, images, batch_size=args.batch)
        sync(args.device)
        rate = len(images) / (time.perf_counter() - t0)
        ran = getattr(bundle, "precision", precision)
        result[f"pack_{precision}"] = {"images_per_s": rate, "precision": ran}
        lines.append(f"pack, batched on {args.device} ({precision} -> {ran}), batch {args.batch}: {rate:8.1f} images/s "
                     f"(x{rate / loop_rate:.1f} the loop; {len(images)} images)")
        if precision == "auto":
            emb_auto = torch.as_tensor(emb)
        else:
            emb32 = torch.as_tensor(emb)
    cos_loop = torch.nn.functional.cosine_similarity(emb32[: args.loop_images], f_loop, dim=-1)
    cos_auto = torch.nn.functional.cosine_similarity(emb_auto, emb32, dim=-1)
    result["cosine_auto_vs_fp32_min"] = float(cos_auto.min())
    result["cosine_pack_vs_loop_min"] = float(cos_loop.min())
    lines.append(f"embeddings: auto vs fp32 cosine min {float(cos_auto.min()):.6f}; pack (tensor preprocessing) vs "
                 f"loop (PIL preprocessing) cosine min {float(cos_loop.min()):.4f}")
    result["lines"] = lines
    print(json.dumps(result))


if __name__ == "__main__":
    main()
