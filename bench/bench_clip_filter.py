"""CLIP filter throughput: DTGen's one-image-per-forward loop vs this pack's batched filter, in
fp32 and in bf16 where the CPU has native bf16.

Same 256 real photos (crops / flips of scikit-image's sample photos, 512 x 512 PNG files), same
random-init ViT-B-32 weights (weights do not change the cost), same threads, same run:
  (a) DTGen's procedure, reimplemented faithfully: for every image PIL.Image.open -> open_clip
      preprocess -> model.encode_image on a batch of 1, the prompt tokenized and encoded again for
      every image, cosine, then mean - k*std per class;
  (b) this filter in fp32: score_items (batched preprocessing on the model's device, one forward
      per batch, each distinct text encoded once) + decide(mean_std);
  (c) the same in bf16 (weights cast to bfloat16), only where the CPU has amx_bf16/avx512_bf16:
      what the loader's precision "auto" picks there.
(b), (c) get the images as arrays, as the ComfyUI node does (they come from the VAE decoder, not
from files); the PNG decode time that (a) pays is printed separately.
Also: the CPU's bf16 flags and auto's choice; the image encoder alone at the chosen batch in fp32,
bf16 autocast (fp32 weights) and bf16 weights (why the filter casts instead of autocasting), and
their embedding cosines vs fp32; preprocessing alone (PIL per image vs batched torch); the
machine's fp32 matmul rate measured now (2048^3, the reference for the percentage), the fraction
of it (b) reaches (image encoder FLOPs counted with torch.utils.flop_counter), the rate of the
encoder's own GEMM shapes as context, batch size choices, and re-thresholding 10,000 stored scores.

Run: python bench/bench_clip_filter.py [--images 256] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pkg import load_package

load_package()

import numpy as np
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.scoring.clip_model import load_clip
from dtgen.nodes.curation.decide import decide, refilter
from dtgen.nodes.scoring.precision import cpu_bf16, resolve_precision
from dtgen.nodes.scoring.similarity import TextEmbeddingCache, model_input, score_items

# photos bundled with scikit-image (no download): colour and gray, natural and microscopy
SOURCES = ["astronaut", "coffee", "chelsea", "rocket", "camera", "retina", "hubble_deep_field",
           "immunohistochemistry", "coins", "moon", "page", "brick", "grass", "gravel", "logo", "text"]
CLASSES = ["cup", "plate", "bowl", "glass"]
SIZE = 512


def photos(n: int, seed: int = 0) -> list[np.ndarray]:
    """n distinct 512 x 512 x 3 uint8 crops / flips of the bundled scikit-image photos."""
    from PIL import Image
    from skimage import data

    bases = []
    for name in SOURCES:
        img = np.asarray(getattr(data, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        bases.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        base = bases[i % len(bases)]
        h, w = base.shape[:2]
        side = int(min(h, w) * rng.uniform(0.45, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = base[top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((SIZE, SIZE),
                                                                                Image.BICUBIC)))
    return out


def prompts(n: int, seed: int = 1) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    styles = ["on a wooden table", "studio lighting", "top view", "close-up", "on a shelf",
              "in a kitchen", "white background", "outdoors", "macro photo", "soft shadows",
              "product shot", "cluttered scene", "on a plate rack", "dim light", "bright day", "blurry"]
    labels = [CLASSES[i % len(CLASSES)] for i in range(n)]
    texts = [f"a photo of a {lab}, {styles[rng.integers(len(styles))]}" for lab in labels]
    return labels, texts


def build_weights(folder: Path) -> Path:
    import open_clip
    import torch
    from safetensors.torch import save_file

    path = folder / "vit_b32_random.safetensors"
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def dtgen_reference(bundle, files, texts) -> np.ndarray:
    """(a) DTGen's loop: one image and one text per forward, file opened with PIL."""
    import open_clip
    import torch
    from PIL import Image

    preprocess = open_clip.image_transform(bundle.image_size, is_train=False,
                                           mean=bundle.mean, std=bundle.std)
    model, tokenizer = bundle.model, bundle.tokenizer
    scores = []
    for path, text in zip(files, texts):
        image = preprocess(Image.open(path)).unsqueeze(0)
        tokens = tokenizer([text])
        with torch.no_grad():
            img_f = model.encode_image(image)
            txt_f = model.encode_text(tokens)
        img_f = img_f / img_f.norm(dim=-1, keepdim=True)
        txt_f = txt_f / txt_f.norm(dim=-1, keepdim=True)
        scores.append(float((img_f @ txt_f.T)[0, 0]))
    return np.array(scores)


def dtgen_threshold(scores, labels, k=1.5) -> np.ndarray:
    keep = np.zeros(len(scores), bool)
    for lab in set(labels):
        idx = np.array([i for i, x in enumerate(labels) if x == lab])
        s = scores[idx]
        keep[idx] = s >= s.mean() - k * s.std()
    return keep


def ours(bundle, arrays, labels, texts, batch_size, cache=None, embeddings=None) -> np.ndarray:
    """(b)/(c) scoring: batched, each distinct text encoded once per cache."""
    items = [ScoredItem(image=a, label=lab, prompt=t, index=i)
             for i, (a, lab, t) in enumerate(zip(arrays, labels, texts))]
    score_items(bundle, items, "prompt", batch_size=batch_size, text_cache=cache)
    if embeddings is not None:
        embeddings.extend(it.embedding for it in items)
    return np.array([it.score for it in items])


def encoder_rates(bundle, floats, batch: int, rounds: int = 3) -> dict:
    """Image encoder alone on one preprocessed batch: fp32, bf16 autocast (fp32 weights), bf16
    weights; best images/s of ``rounds`` interleaved rounds, and each one's embeddings."""
    import copy

    import torch

    x = model_input(bundle, floats[:batch])
    cast = copy.deepcopy(bundle.model).to(torch.bfloat16)

    def autocast(t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return bundle.model.encode_image(t)

    runs = {"fp32": bundle.model.encode_image, "bf16 autocast": autocast,
            "bf16 weights": lambda t: cast.encode_image(t.to(torch.bfloat16))}
    rates, embs = {k: 0.0 for k in runs}, {}
    with torch.inference_mode():
        for name, fn in runs.items():   # warm-up (oneDNN picks its kernels on the first call)
            embs[name] = torch.nn.functional.normalize(fn(x).float(), dim=-1).numpy()
        for _ in range(rounds):
            for name, fn in runs.items():
                t = time.perf_counter()
                fn(x)
                rates[name] = max(rates[name], batch / (time.perf_counter() - t))
    return {"rates": rates, "embs": embs}


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def ours_decide(scores, labels):
    items = [ScoredItem(image=None, label=lab, prompt="", score=float(s))
             for s, lab in zip(scores, labels)]
    batch = decide(items, "mean_std", min_count=0)
    return scores, np.array([it.accepted for it in batch.items])


def matmul_gflops(shapes=((2048, 2048, 2048),), reps: int = 6) -> float:
    """Best fp32 rate over ``reps`` runs of the matmuls [m, k] x [k, n] in ``shapes``, together."""
    import torch

    pairs = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    for a, b in pairs:
        torch.matmul(a, b)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        for a, b in pairs:
            torch.matmul(a, b)
        best = max(best, flops / (time.perf_counter() - t) / 1e9)
    return best


def encoder_gemm_shapes(bundle, batch: int) -> list[tuple[int, int, int]]:
    """The image encoder's per-layer GEMMs for ``batch`` images: qkv, out proj, MLP up, MLP down."""
    visual = bundle.model.visual
    d = visual.conv1.out_channels
    rows = batch * ((bundle.image_size[0] // visual.conv1.kernel_size[0])
                    * (bundle.image_size[1] // visual.conv1.kernel_size[1]) + 1)
    hidden = visual.transformer.resblocks[0].mlp.c_fc.out_features
    return [(rows, d, 3 * d), (rows, d, d), (rows, d, hidden), (rows, hidden, d)]


def image_flops(bundle) -> tuple[float, float]:
    """FLOPs (2 x multiply-adds) of one image through the image encoder: counted, and analytic.

    Counted with FlopCounterMode with autograd on, so nn.MultiheadAttention takes its plain
    (countable) path instead of the fused inference kernel that the counter does not see.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, *bundle.image_size)
    with FlopCounterMode(display=False) as counter:
        bundle.model.encode_image(x)
    visual = bundle.model.visual
    d = visual.conv1.out_channels
    patch = visual.conv1.kernel_size[0]
    tokens = (bundle.image_size[0] // patch) * (bundle.image_size[1] // patch) + 1
    layers = len(visual.transformer.resblocks)
    hidden = visual.transformer.resblocks[0].mlp.c_fc.out_features
    macs = (tokens - 1) * 3 * patch * patch * d                       # patch embedding
    macs += layers * tokens * (4 * d * d + 2 * d * hidden)            # qkv + out proj + MLP
    macs += layers * 2 * tokens * tokens * d                          # QK^T and attn @ V
    macs += d * visual.output_dim                                     # final projection
    return float(counter.get_total_flops()), 2.0 * macs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sweep-images", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=64, help="images per (a)/(b) alternation")
    args = parser.parse_args()

    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    cpu = cpu_bf16()
    auto = resolve_precision("auto", "cpu")
    print(f"CPU bf16 flags: {cpu.describe()}; precision auto on this CPU: {auto}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        arrays = photos(args.images)
        files = []
        for i, a in enumerate(arrays):
            files.append(tmp / f"{i:04d}.png")
            Image.fromarray(a).save(files[-1])
        assert len({a.tobytes() for a in arrays}) == len(arrays), "images must be distinct"
        labels, texts = prompts(args.images)
        weights = str(build_weights(tmp))
        bundle = load_clip("ViT-B-32", weights)
        bf16 = load_clip("ViT-B-32", weights, dtype="bf16") if cpu.native else None
        floats = [a.astype(np.float32) / 255.0 for a in arrays]
        print(f"{len(arrays)} distinct {SIZE}x{SIZE} photos, {len(set(texts))} distinct prompts, "
              f"{len(CLASSES)} classes")

        t = time.perf_counter()
        for f in files:
            Image.open(f).convert("RGB").load()
        decode = time.perf_counter() - t
        print(f"PNG decode alone (paid by (a) only): {decode:.2f} s")

        gflops_peak = matmul_gflops()
        flops_img, flops_formula = image_flops(bundle)
        print(f"fp32 matmul 2048^3: {gflops_peak:.1f} GFLOP/s; ViT-B-32 image encoder: "
              f"{flops_img / 1e9:.2f} GFLOP per 224 image (FlopCounterMode), "
              f"{flops_formula / 1e9:.2f} from the architecture")

        # batch size choice, on a subset
        sub = args.sweep_images
        ours(bundle, floats[:8], labels[:8], texts[:8], 8)   # warm-up
        if bf16 is not None:
            ours(bf16, floats[:8], labels[:8], texts[:8], 8)
        best_bs, best_rate = 32, 0.0
        for bs in (8, 16, 32, 64):
            if bs > sub:
                break
            t = time.perf_counter()
            ours(bundle, floats[:sub], labels[:sub], texts[:sub], bs)
            rate = sub / (time.perf_counter() - t)
            print(f"  batch {bs:3d}: {rate:6.2f} images/s ({sub} images, fp32)")
            if rate > best_rate:
                best_bs, best_rate = bs, rate

        # preprocessing alone: open_clip's PIL transform per image vs the batched torch path
        import open_clip

        pil = open_clip.image_transform(bundle.image_size, is_train=False, mean=bundle.mean, std=bundle.std)
        n_pre = min(64, len(arrays))
        t = time.perf_counter()
        for a in arrays[:n_pre]:
            pil(Image.fromarray(a))
        t_pil = (time.perf_counter() - t) / n_pre
        t = time.perf_counter()
        for start in range(0, n_pre, best_bs):
            model_input(bundle, floats[start:min(start + best_bs, n_pre)])
        t_torch = (time.perf_counter() - t) / n_pre
        print(f"preprocessing alone, {SIZE}^2 -> 224^2: PIL per image (from array, no decode) "
              f"{t_pil * 1e3:.1f} ms/image; batched torch on the model's device {t_torch * 1e3:.1f} ms/image "
              f"({t_pil / t_torch:.2f}x)")

        # the image encoder alone: fp32 vs bf16 autocast vs bf16 weights
        enc = encoder_rates(bundle, floats, best_bs)
        r = enc["rates"]
        line = ", ".join(f"{k} {v:.2f}" for k, v in r.items())
        print(f"image encoder alone, batch {best_bs}, images/s: {line}")
        print(f"  ratios vs fp32: bf16 autocast {r['bf16 autocast'] / r['fp32']:.2f}x, bf16 weights "
              f"{r['bf16 weights'] / r['fp32']:.2f}x" + ("" if cpu.native else " (bf16 emulated: no native bf16)"))
        for name in ("bf16 autocast", "bf16 weights"):
            c = cosines(enc["embs"]["fp32"], enc["embs"][name])
            print(f"  embedding cosine {name} vs fp32: min {c.min():.6f}, mean {c.mean():.6f} ({best_bs} photos)")

        # (a), (b), (c) alternate chunk by chunk so all meet the same load from other processes
        t_a = t_b = t_c = 0.0
        cache = TextEmbeddingCache(bundle)
        cache_c = TextEmbeddingCache(bf16) if bf16 is not None else None
        ref_scores, our_scores, bf_scores, emb_b, emb_c = [], [], [], [], []
        for start in range(0, len(files), args.chunk):
            part = slice(start, start + args.chunk)
            t = time.perf_counter()
            ref_scores.append(dtgen_reference(bundle, files[part], texts[part]))
            t_a += time.perf_counter() - t
            t = time.perf_counter()
            our_scores.append(ours(bundle, floats[part], labels[part], texts[part], best_bs, cache, emb_b))
            t_b += time.perf_counter() - t
            if bf16 is not None:
                t = time.perf_counter()
                bf_scores.append(ours(bf16, floats[part], labels[part], texts[part], best_bs, cache_c, emb_c))
                t_c += time.perf_counter() - t
        t = time.perf_counter()
        ref_keep = dtgen_threshold(np.concatenate(ref_scores), labels)
        t_a += time.perf_counter() - t
        t = time.perf_counter()
        our_scores, our_keep = ours_decide(np.concatenate(our_scores), labels)
        t_b += time.perf_counter() - t
        ref_scores = np.concatenate(ref_scores)

        rate_a, rate_b = len(files) / t_a, len(files) / t_b
        print(f"(a) DTGen loop (PIL per image, 1 image + 1 text per forward, fp32): {t_a:6.1f} s  "
              f"{rate_a:6.2f} images/s")
        print(f"(b) this filter fp32 (batch {best_bs}, {cache.encoded_count} texts encoded once): "
              f"{t_b:6.1f} s  {rate_b:6.2f} images/s")
        if bf16 is not None:
            t = time.perf_counter()
            bf_scores, bf_keep = ours_decide(np.concatenate(bf_scores), labels)
            t_c += time.perf_counter() - t
            rate_c = len(files) / t_c
            print(f"(c) this filter bf16 (batch {best_bs}): {t_c:6.1f} s  {rate_c:6.2f} images/s")
        print(f"speed-up (b)/(a): {rate_b / rate_a:.2f}x (target >= 3x)")
        if bf16 is not None:
            print(f"speed-up (c)/(a): {rate_c / rate_a:.2f}x; (c)/(b) bf16 vs fp32: {rate_c / rate_b:.2f}x")
        gflops_after = matmul_gflops()
        peak = max(gflops_peak, gflops_after)   # other processes share the CPU: be conservative
        shaped = matmul_gflops(encoder_gemm_shapes(bundle, best_bs))
        reached = rate_b * flops_img / 1e9
        print(f"(b) reaches {reached:.1f} GFLOP/s = {100 * reached / peak:.0f}% of the measured "
              f"matmul rate (2048^3: {gflops_peak:.1f} before, {gflops_after:.1f} GFLOP/s after; "
              f"image encoder FLOPs only, text encoding and preprocessing count as overhead)")
        print(f"  context: the encoder's own GEMM shapes at batch {best_bs} run at {shaped:.1f} "
              f"GFLOP/s here; (b) reaches {100 * reached / shaped:.0f}% of that")
        diff = np.abs(ref_scores - our_scores)
        print(f"score agreement (a) vs (b): max |diff| {diff.max():.2e}, mean {diff.mean():.2e}; "
              f"same accept/reject for {int((ref_keep == our_keep).sum())}/{len(files)}")
        if bf16 is not None:
            c = cosines(emb_b, emb_c)
            diff = np.abs(our_scores - bf_scores)
            print(f"(b) fp32 vs (c) bf16: image embedding cosine min {c.min():.6f}, mean {c.mean():.6f}; "
                  f"score max |diff| {diff.max():.2e}, mean {diff.mean():.2e} (score std {our_scores.std():.2e}); "
                  f"same accept/reject for {int((our_keep == bf_keep).sum())}/{len(files)}")

    rng = np.random.default_rng(0)
    labels10 = [f"class{i % 10}" for i in range(10_000)]
    records = [{"label": lab, "score": float(s),
                "class_scores": {f"class{j}": float(rng.normal(0.2, 0.03)) for j in range(10)}}
               for lab, s in zip(labels10, rng.normal(0.3, 0.03, 10_000))]
    for margin in (None, 0.0):
        t = time.perf_counter()
        res = refilter(records, "mean_std", margin=margin)
        dt = time.perf_counter() - t
        print(f"refilter 10,000 stored scores, 10 classes, margin={margin}: {dt * 1000:.0f} ms "
              f"({sum(r['accepted'] for r in res.records)} kept)")


if __name__ == "__main__":
    main()
