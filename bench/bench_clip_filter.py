"""CLIP filter on the CPU: this pack's filter against the image encoder's own ceiling and against
DTGen's REAL procedure (issue #28), per precision the CPU runs natively.

Material: ``--images`` (64) real photos (crops / flips of scikit-image's photos) at ``--side`` (1024)
px, four classes named like DTGen's dirtiness levels, each image's prompt DTGen's own
``f"a photo of a {level} of tableware"``. One random-init ViT-B-32 (weights do not change the cost)
is used by everything: loaded by the pack (``load_clip``) and converted to a transformers
``CLIPModel`` folder (``_hf_clip.py``; the cosines of both models' embeddings are printed).

Measured, in interleaved rounds (``--rounds``; best of each, since other processes on a shared CPU
only ever slow a run down), images/s of:
  ceiling   the image encoder alone: ``model.encode_image`` on one batch of ``--batch`` images
            already preprocessed to 224² (no validation, no resize, no text, no decision);
  filter    ``nodes.curation.filtering.filter_run`` (score_items + decide, mean_std k = 1.5 as
            DTGen), batch ``--batch``:
              from arrays: float32 H x W x 3 in [0, 1], as VAEDecode hands them (the graph's case);
              from files:  each PNG decoded with PIL first, as DTGen does;
  DTGen     DTGen's ``scripts/filter_unmatched_images.py`` pass 1 as written: per image
            ``Image.open(png).convert("RGB")``, ``CLIPProcessor(text=[prompt], images=image, ...)``,
            ``CLIPModel(**inputs)``, ``image_embeds @ text_embeds.T`` (fp32, one image and its prompt
            per forward), from files, and from arrays (``Image.fromarray`` instead of the PNG).
Then the fraction of the ceiling each filter run reaches (target >= 0.85 at the same precision), the
ratios to DTGen, one run's time per stage, and the score agreement with DTGen.
Precisions: fp32, plus bf16 where the CPU computes it natively (amx_bf16 / avx512_bf16; what the
loader's precision "auto" picks there). On a CPU without them bf16 is emulated (several times slower
than fp32), "auto" picks fp32, and bf16 is skipped (``--emulated-bf16`` times it anyway).
Also: re-thresholding 10,000 stored scores.

``--clock cpu`` times the main thread's CPU seconds with one torch thread instead of wall-clock
seconds: on a CPU shared with other processes their load does not inflate it (ratios at one thread).

Run: python bench/bench_clip_filter.py [--images 64] [--side 1024] [--batch 64] [--rounds 3] [--threads N]
     [--clock wall|cpu]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _clock import CLOCK, clock, use_clock
from _pkg import load_package

load_package()

import numpy as np
from bench_copy_paste import cpu_line
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.curation.decide import refilter
from dtgen.nodes.curation.filtering import filter_run
from dtgen.nodes.curation.thresholds import get_method
from dtgen.nodes.scoring.clip_model import load_clip
from dtgen.nodes.scoring.precision import cpu_bf16, resolve_precision
from dtgen.nodes.scoring.similarity import (
    TextEmbeddingCache,
    model_input,
    prepare_images,
)

# photos bundled with scikit-image (no download): colour and gray, natural and microscopy
SOURCES = ["astronaut", "coffee", "chelsea", "rocket", "camera", "retina", "hubble_deep_field",
           "immunohistochemistry", "coins", "moon", "page", "brick", "grass", "gravel", "logo", "text"]
LEVELS = ["clean", "heavily_dirty", "moderately_dirty", "slightly_dirty"]   # DTGen's classes
K = 1.5   # DTGen's --std-dev-factor default


def photos(n: int, side: int, seed: int = 0) -> list[np.ndarray]:
    """n distinct side x side x 3 uint8 crops / flips of the bundled scikit-image photos."""
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
        edge = int(min(h, w) * rng.uniform(0.45, 1.0))
        top, left = rng.integers(0, h - edge + 1), rng.integers(0, w - edge + 1)
        crop = base[top:top + edge, left:left + edge]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((side, side), Image.BICUBIC)))
    return out


def labels_prompts(n: int) -> tuple[list[str], list[str]]:
    labels = [LEVELS[i % len(LEVELS)] for i in range(n)]
    return labels, [f"a photo of a {lab} of tableware" for lab in labels]




def build_weights(folder: Path):
    import open_clip
    import torch
    from safetensors.torch import save_file

    path = folder / "vit_b32_random.safetensors"
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model


def run_filter(bundle, images, labels, prompts, batch: int):
    """``filter_run`` as the node calls it (prompt side, mean_std k = 1.5, no dataset)."""
    items = [ScoredItem(image=a, label=lab, prompt=p, index=i)
             for i, (a, lab, p) in enumerate(zip(images, labels, prompts))]
    out, _ = filter_run(bundle, items, get_method("mean_std", k=K), text_side="prompt", min_count=0,
                        batch_size=batch)
    return out


def decode_png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def ceiling(bundle, x) -> float:
    """Seconds of one ``encode_image`` on the preprocessed batch ``x``."""
    import torch

    with torch.inference_mode():
        t = clock()
        bundle.model.encode_image(x)
        return clock() - t


def stage_times(bundle, floats, prompts, batch: int) -> dict:
    """One pass of the filter's image path split by stage (seconds for all images)."""
    import torch

    out = {"validate": 0.0, "preprocess": 0.0, "encode": 0.0}
    with torch.inference_mode():
        for start in range(0, len(floats), batch):
            t = clock()
            ready = prepare_images(floats[start:start + batch])
            out["validate"] += clock() - t
            t = clock()
            x = model_input(bundle, ready)
            out["preprocess"] += clock() - t
            t = clock()
            bundle.model.encode_image(x)
            out["encode"] += clock() - t
    t = clock()
    TextEmbeddingCache(bundle).encode(prompts)
    out[f"text ({len(set(prompts))} distinct prompts, no memo)"] = clock() - t
    return out


def encoder_precisions(bundle, x) -> None:
    """The encoder alone in fp32, bf16 autocast (fp32 weights) and bf16 weights, and the bf16
    embeddings' cosines to fp32: why the filter casts the weights instead of autocasting."""
    import copy

    import torch

    cast = copy.deepcopy(bundle.model).to(torch.bfloat16)

    def autocast(t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return bundle.model.encode_image(t)

    runs = {"fp32": bundle.model.encode_image, "bf16 autocast": autocast,
            "bf16 weights": lambda t: cast.encode_image(t.to(torch.bfloat16))}
    rates, embs = {}, {}
    with torch.inference_mode():
        for name, fn in runs.items():
            fn(x[:2])
            t = clock()
            embs[name] = torch.nn.functional.normalize(fn(x).float(), dim=-1).numpy()
            rates[name] = len(x) / (clock() - t)
    print("encoder alone, images/s: " + ", ".join(f"{k} {v:.2f}" for k, v in rates.items()))
    for name in ("bf16 autocast", "bf16 weights"):
        c = cosines(embs["fp32"], embs[name])
        print(f"  embedding cosine {name} vs fp32: min {c.min():.6f}, mean {c.mean():.6f} ({len(x)} photos)")


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=tuple(CLOCK), default="wall",
                        help="wall: wall-clock seconds; cpu: the main thread's CPU seconds with one torch thread "
                             "(for a CPU shared with other processes)")
    parser.add_argument("--emulated-bf16", action="store_true", help="time bf16 even without native bf16")
    args = parser.parse_args()

    import torch
    import transformers
    from _hf_clip import check_same_model, dtgen_filter_loop, load_hf_clip, save_hf_clip
    from PIL import Image

    if args.threads:
        torch.set_num_threads(args.threads)
    use_clock(args.clock)
    unit = "images/s" if args.clock == "wall" else "images per CPU-second (1 thread)"
    if hasattr(os, "getloadavg"):
        print(f"load average before the run: {os.getloadavg()[0]:.2f}")
    print(cpu_line())
    cpu = cpu_bf16()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, torch threads "
          f"{torch.get_num_threads()}; native bf16: {cpu.describe()}; precision auto on this CPU: "
          f"{resolve_precision('auto', 'cpu')}")
    precisions = ["fp32"] + (["bf16"] if cpu.native or args.emulated_bf16 else [])
    if "bf16" not in precisions:
        print("bf16: skipped (no native bf16 on this CPU: emulated, several times slower than fp32; "
              "--emulated-bf16 times it anyway)")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n, side = args.images, args.side
        u8 = photos(n, side)
        assert len({a.tobytes() for a in u8}) == n, "images must be distinct"
        floats = [a.astype(np.float32) / 255.0 for a in u8]   # VAEDecode's output, as arrays
        files = []
        for i, a in enumerate(u8):
            files.append(tmp / f"{i:04d}_{LEVELS[i % len(LEVELS)]}.png")
            Image.fromarray(a).save(files[-1], compress_level=4)   # ComfyUI SaveImage's level
        labels, prompts = labels_prompts(n)
        weights, oc_model = build_weights(tmp)
        hf_model, processor = load_hf_clip(save_hf_clip(oc_model, tmp / "hf"))
        bundles = {p: load_clip("ViT-B-32", str(weights), precision=p) for p in precisions}
        check = check_same_model(oc_model, hf_model, processor, bundles["fp32"].tokenizer,
                                 model_input(bundles["fp32"], prepare_images(floats[:4])), prompts[1])
        print(f"{n} distinct real photos at {side}², {len(LEVELS)} classes, prompts as DTGen's "
              f"('{prompts[1]}'), batch {args.batch}; transformers model vs open_clip, same weights: image "
              f"embedding cosine min {check['image_cosine_min']:.7f}, text {check['text_cosine']:.7f}, same "
              f"tokens {check['same_tokens']}; processor {type(processor.image_processor).__name__}")
        del oc_model

        # warm-up: oneDNN picks its kernels on the first call of each shape
        for p, b in bundles.items():
            run_filter(b, floats[:args.batch], labels, prompts, args.batch)
        dtgen_filter_loop(hf_model, processor, files[:2], prompts[:2])
        xs = {p: model_input(b, prepare_images(floats[:args.batch])) for p, b in bundles.items()}

        best: dict[str, float] = {}

        def keep(name: str, images: int, seconds: float) -> None:
            best[name] = max(best.get(name, 0.0), images / seconds)

        dt_scores = {}
        for r in range(args.rounds):
            for p, b in bundles.items():
                keep(f"ceiling {p}", args.batch, ceiling(b, xs[p]))
                t = clock()
                ours = run_filter(b, floats, labels, prompts, args.batch)
                keep(f"filter {p} from arrays", n, clock() - t)
                t = clock()
                run_filter(b, [decode_png(f) for f in files], labels, prompts, args.batch)
                keep(f"filter {p} from files", n, clock() - t)
            for source, inputs in (("arrays", u8), ("files", files)):
                t = clock()
                dt_scores[source] = dtgen_filter_loop(hf_model, processor, inputs, prompts)
                keep(f"DTGen fp32 from {source}", n, clock() - t)
            print(f"  round {r + 1}/{args.rounds} done" + (f", load average {os.getloadavg()[0]:.2f}"
                                                           if hasattr(os, "getloadavg") else ""), flush=True)

        print(f"\n{unit} (best of {args.rounds} interleaved rounds, {args.clock} clock):")
        for name, rate in best.items():
            print(f"  {name:28s} {rate:7.2f}")
        print("\nfraction of the encoder's ceiling at the same precision (target >= 0.85), and x DTGen's "
              "real procedure (fp32):")
        for p in bundles:
            for source in ("arrays", "files"):
                rate = best[f"filter {p} from {source}"]
                print(f"  filter {p} from {source:6s}: {rate / best[f'ceiling {p}']:.3f} of the ceiling; "
                      f"{rate / best[f'DTGen fp32 from {source}']:.2f}x DTGen from {source}")
        print(f"  DTGen fp32 from arrays / files: {best['DTGen fp32 from arrays'] / best['ceiling fp32']:.3f} / "
              f"{best['DTGen fp32 from files'] / best['ceiling fp32']:.3f} of the fp32 ceiling")

        for p, b in bundles.items():
            runs = [stage_times(b, floats, prompts, args.batch) for _ in range(2)]
            st = {k: min(r[k] for r in runs) for k in runs[0]}   # each stage's best of two passes
            total = sum(st.values())
            print(f"\nthe filter's image path, {p}, by stage (s for {n} images, best of 2 passes): "
                  + ", ".join(f"{k} {v:.2f} ({100 * v / total:.0f}%)" for k, v in st.items()))
            t = clock()
            [decode_png(f) for f in files]
            print(f"  PNG decode alone (PIL, what 'from files' adds): {clock() - t:.2f} s")

        ours_scores = np.array([it.score for it in ours.items])
        for source, scores in dt_scores.items():
            scores = np.asarray(scores)
            keep_dt = np.zeros(n, bool)
            for lab in LEVELS:
                idx = np.array([i for i, x in enumerate(labels) if x == lab])
                keep_dt[idx] = scores[idx] >= scores[idx].mean() - K * scores[idx].std()
            same = int((keep_dt == np.array([it.accepted for it in ours.items])).sum())
            diff = np.abs(scores - ours_scores)
            print(f"scores vs DTGen from {source} (fp32): max |diff| {diff.max():.2e}, mean {diff.mean():.2e} "
                  f"(score std {ours_scores.std():.2e}); same accept/reject {same}/{n}")

        if cpu.native or args.emulated_bf16:
            encoder_precisions(bundles["fp32"], xs["fp32"])

    rng = np.random.default_rng(0)
    labels10 = [f"class{i % 10}" for i in range(10_000)]
    records = [{"label": lab, "score": float(s),
                "class_scores": {f"class{j}": float(rng.normal(0.2, 0.03)) for j in range(10)}}
               for lab, s in zip(labels10, rng.normal(0.3, 0.03, 10_000))]
    for margin in (None, 0.0):
        t = clock()
        res = refilter(records, "mean_std", margin=margin)
        dt = clock() - t
        print(f"refilter 10,000 stored scores, 10 classes, margin={margin}: {dt * 1000:.0f} ms "
              f"({sum(r['accepted'] for r in res.records)} kept)")


if __name__ == "__main__":
    main()
