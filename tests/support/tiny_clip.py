"""A small CLIP trained at fixture time on real labelled images, so that image-text scores in
tests and benches carry meaning (a random-weight CLIP scores every image alike).

Data: the textile images of ``conformal-clip-data`` (MIT; 250 x 250 RGB; ``nominal`` 1000,
``local`` 500, ``global`` 500), the last ``HELD_OUT`` of each class (sorted by name) kept out of
training for the tests, plus extra classes that give the model a notion of "not fabric":
scikit-image's bundled photos named by what they show (random crops of one photo each) and two
synthetic ones, "a blank image" (constant frames and faint gradients) and "an image of random
noise" (uniform / gaussian pixel noise, gray or colour). Without those two, measured: a noise frame
scored 0.82 on the global-defect text (finer weave = more high-frequency energy) and a mid-gray
frame 0.86, i.e. a model that never saw such frames puts them anywhere. Nothing is downloaded.

Model: ``MODEL_CFG``, an open_clip ``CLIP`` of about 7.6 M parameters (most of them the frozen
token embedding), trained image -> text with a cross-entropy over the class captions (CLIP's
contrastive loss with one caption per class), seeded, on ``THREADS`` threads (three builds on one
machine gave bit-identical weights; another CPU may differ in the last bits, hence test floors
checked over three seeds). Saved as ``<ARCH>.safetensors`` with its config ``<ARCH>.json`` (the
format ``nodes/scoring/clip_model.load_clip`` reads for a custom architecture) and
``<ARCH>.info.json`` (build time, zero-shot accuracy per class on the held-out images, the
held-out file names).

Measured (seed 0, 2 cores): build 110 s (420 steps); zero-shot accuracy on the 300 held-out
images 70 % (nominal 62 %, local 49 %, global 99 %), held-out crops / frames of the extra classes
94 %. ``local`` (one mark of about 13 x 21 px) is not separable from ``nominal`` at 96 px: the mark
vanishes in the resize (240 px with 24 px patches, 450 steps: local still 0 %), so their two texts
end up close (cosine 0.97) and images of either class score alike on both; ``global`` is
separated from both (own text 0.84 vs 0.18-0.25).

``tiny_clip()`` builds once into the fixture cache (``fixtures.cache_dir()``, under a file lock in
its own folder) and prints the build time and accuracy; ``python tests/support/tiny_clip.py
[--force]`` does the same from a shell. ``DTGEN_TINY_CLIP_SEED=<n>`` trains (and caches
separately) another seed, as used to measure the test floors.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

if __package__:
    from .fixtures import _locked, cache_dir
else:   # run as a script (the build subprocess): tests/ holds the ``support`` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from support.fixtures import _locked, cache_dir

RECIPE_VERSION = "1"        # bump when data, model or training change: a new cache folder
DATA_PACKAGE = "conformal-clip-data==0.1.4"
ARCH = "dtgen-tiny-textile-clip"
WEIGHTS = f"{ARCH}.safetensors"
CONFIG = f"{ARCH}.json"
INFO = f"{ARCH}.info.json"
# The textile classes and their CLIP texts (usable as a prompt pack's clip_text).
TEXTILE = {
    "nominal": "a photo of nominal fabric",
    "local": "a photo of fabric with a small local defect",
    "global": "a photo of fabric with a global texture defect",
}
# Extra classes: scikit-image's bundled photos (no download), each named by what it shows.
PHOTOS = {
    "astronaut": "a photo of an astronaut", "coffee": "a photo of a cup of coffee",
    "chelsea": "a photo of a cat", "rocket": "a photo of a rocket",
    "camera": "a photo of a man with a camera", "coins": "a photo of coins",
    "moon": "a photo of the moon", "brick": "a photo of a brick wall",
    "grass": "a photo of grass", "gravel": "a photo of gravel",
}
# Synthetic extra classes (drawn at random sizes, then resized like every image).
SYNTHETIC = {"blank": "a blank image", "noise": "an image of random noise"}
HELD_OUT = 100              # per textile class: the last 100 files by name
IMAGE_SIZE = 96
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 4, "width": 128, "head_width": 32, "patch_size": 12},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}
TRAIN = {"steps": 420, "textile_per_class": 16, "extras_per_batch": 16, "lr": 1e-3, "weight_decay": 0.1,
         "warmup": 30, "seed": int(os.environ.get("DTGEN_TINY_CLIP_SEED", "0")), "extra_views": 96}
THREADS = int(os.environ.get("DTGEN_TINY_CLIP_THREADS", "2"))


def data_missing() -> str | None:
    """None when the textile images are importable, else the package to install."""
    try:
        import conformal_clip_data  # noqa: F401
    except ImportError:
        return DATA_PACKAGE
    return None


def textile_root() -> Path:
    import conformal_clip_data

    return Path(conformal_clip_data.textile_simulated_root())


def split(label: str) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files) of a textile class: the held-out ones are the last
    ``HELD_OUT`` by name, the same on every machine."""
    files = sorted((textile_root() / label).glob("*.jpg"))
    return files[:-HELD_OUT], files[-HELD_OUT:]


def held_out(label: str, limit: int | None = None) -> list[Path]:
    return split(label)[1][:limit]


def load_image(path) -> np.ndarray:
    """H x W x 3 float32 in [0, 1], as the CLIP filter receives images."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def photo(name: str) -> np.ndarray:
    """A scikit-image photo as H x W x 3 float32 in [0, 1]."""
    import numpy as np
    from skimage import data

    arr = getattr(data, name)()
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr[:, :, :3].astype(np.float32) / 255.0


def folder() -> Path:
    seed = TRAIN["seed"]
    return cache_dir() / (f"tiny_clip-r{RECIPE_VERSION}" + (f"-seed{seed}" if seed else ""))


def tiny_clip(force: bool = False, quiet: bool = False) -> tuple[Path, str, str, dict]:
    """(folder, arch, weights file name, info) of the trained model, built once (a few minutes).

    ``load_clip(arch, str(folder / weights))`` loads it; ``info`` holds the build time, the
    zero-shot accuracy per class on the held-out images and the class texts.
    """
    missing = data_missing()
    if missing:
        raise RuntimeError(f"the tiny CLIP fixture needs {missing} (pip install {missing})")
    dest = folder()
    dest.mkdir(parents=True, exist_ok=True)
    with _locked(dest):
        if force or not all((dest / name).is_file() for name in (WEIGHTS, CONFIG, INFO)):
            build = dest / "build"
            shutil.rmtree(build, ignore_errors=True)
            build.mkdir()
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--build", str(build)], check=True)
            for name in (CONFIG, INFO, WEIGHTS):   # weights last: their presence marks a complete build
                os.replace(build / name, dest / name)
            shutil.rmtree(build, ignore_errors=True)
            info = json.loads((dest / INFO).read_text())
            info["built_now"] = True
        else:
            info = json.loads((dest / INFO).read_text())
            info["built_now"] = False
    if not quiet and info["built_now"]:
        print(summary(info), flush=True)
    return dest, ARCH, WEIGHTS, info


def summary(info: dict) -> str:
    acc = info["zero_shot"]
    per_class = ", ".join(f"{k} {v:.0%}" for k, v in acc["per_class"].items())
    cos = info["mean_cosine"]
    return (f"tiny CLIP {info['arch']}: built in {info['build_seconds']:.0f} s ({info['steps']} steps on "
            f"{info['threads']} threads, {info['train_seconds']:.0f} s training); zero-shot accuracy on "
            f"{info['held_out_per_class']} held-out images per class {acc['overall']:.0%} ({per_class}); "
            f"extra classes (photo crops, blank, noise) {acc['extras']:.0%}; mean cosine with own text "
            f"{cos['own']:.3f} vs other textile texts {cos['other']:.3f}")


# ------------------------------------------------------------------------------ the build
def _build(out: Path) -> None:
    """Train and write WEIGHTS, CONFIG, INFO into ``out`` (runs in its own process)."""
    import math

    import numpy as np
    import open_clip
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    t0 = time.time()
    torch.set_num_threads(THREADS)
    torch.manual_seed(TRAIN["seed"])
    gen = torch.Generator().manual_seed(TRAIN["seed"])
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)

    textile = list(TEXTILE)
    extras = {**PHOTOS, **SYNTHETIC}
    captions = [TEXTILE[k] for k in textile] + list(extras.values())
    train_x, held_x = [], []
    for label in textile:
        train_files, held_files = split(label)
        train_x.append(_resized([load_image(p) for p in train_files]))
        held_x.append(_resized([load_image(p) for p in held_files]))
    n_views = TRAIN["extra_views"]
    extra_x, extra_held = [], []
    for i, name in enumerate(extras):
        g = torch.Generator().manual_seed(1000 + i)
        views = _synthetic(name, n_views + 16, g) if name in SYNTHETIC else _views(photo(name), n_views + 16, g)
        extra_x.append(views[:n_views])
        extra_held.append(views[n_views:])
    t_data = time.time() - t0

    def normalise(u8):
        return (u8.float() / 255.0 - mean) / std

    model = open_clip.CLIP(**MODEL_CFG)
    model.token_embedding.weight.requires_grad_(False)   # a few captions: the rows stay random
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"])
    steps, warm = TRAIN["steps"], TRAIN["warmup"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    tokens = open_clip.tokenizer.SimpleTokenizer(context_length=MODEL_CFG["text_cfg"]["context_length"])(captions)

    t1 = time.time()
    model.train()
    for _ in range(steps):
        xs, ys = [], []
        for c, data in enumerate(train_x):
            idx = torch.randint(len(data), (TRAIN["textile_per_class"],), generator=gen)
            xs.append(data[idx])
            ys.append(torch.full((len(idx),), c))
        pick = torch.randint(len(extra_x), (TRAIN["extras_per_batch"],), generator=gen)
        view = torch.randint(n_views, (TRAIN["extras_per_batch"],), generator=gen)
        xs.append(torch.stack([extra_x[int(p)][int(v)] for p, v in zip(pick, view)]))
        ys.append(pick + len(textile))
        x, y = torch.cat(xs), torch.cat(ys)
        turn = torch.rand(len(x), generator=gen) < 0.5     # 180-degree turns keep the weave's direction
        x = torch.where(turn.view(-1, 1, 1, 1), x.flip(-1).flip(-2), x)
        img = F.normalize(model.encode_image(normalise(x)), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        loss = F.cross_entropy(model.logit_scale.exp() * img @ txt.T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    t_train = time.time() - t1

    model.eval()
    with torch.no_grad():
        txt = F.normalize(model.encode_text(tokens), dim=-1)

        def embed(u8):
            return torch.cat([F.normalize(model.encode_image(normalise(u8[i:i + 100])), dim=-1)
                              for i in range(0, len(u8), 100)])

        per_class, own, other = {}, [], []
        for c, label in enumerate(textile):
            sims = embed(held_x[c]) @ txt[:len(textile)].T       # textile texts only, as in a filter run
            per_class[label] = float((sims.argmax(1) == c).float().mean())
            own.append(sims[:, c])
            other.append(sims[:, [j for j in range(len(textile)) if j != c]].flatten())
        extra_hits = {name: float(((embed(v) @ txt.T).argmax(1) == len(textile) + i).float().mean())
                      for i, (name, v) in enumerate(zip(extras, extra_held))}
    n_held = {label: len(x) for label, x in zip(textile, held_x)}
    overall = sum(per_class[k] * n_held[k] for k in textile) / sum(n_held.values())

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    (out / CONFIG).write_text(json.dumps({"arch": ARCH, "model_cfg": MODEL_CFG, "preprocess_cfg": {
        "mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
        "interpolation": "bicubic", "resize_mode": "shortest"}}, indent=1))
    info = {
        "arch": ARCH, "weights": WEIGHTS, "recipe": RECIPE_VERSION, "data": DATA_PACKAGE,
        "classes": TEXTILE, "extra_classes": extras, "train": TRAIN, "steps": steps, "threads": THREADS,
        "held_out_per_class": HELD_OUT,
        "held_out": {label: [p.name for p in split(label)[1]] for label in textile},
        "build_seconds": round(time.time() - t0, 1), "data_seconds": round(t_data, 1),
        "train_seconds": round(t_train, 1),
        "zero_shot": {"overall": overall, "per_class": per_class,
                      "extras": float(np.mean(list(extra_hits.values()))), "per_extra": extra_hits},
        "mean_cosine": {"own": float(torch.cat(own).mean()), "other": float(torch.cat(other).mean())},
        "torch": torch.__version__, "open_clip": open_clip.__version__,
    }
    (out / INFO).write_text(json.dumps(info, indent=1))


def _resized(images) -> torch.Tensor:
    """uint8 [N, 3, S, S]: the CLIP filter's own resize + centre crop (similarity.preprocess_batch)."""
    from types import SimpleNamespace

    import torch
    from dtgen.nodes.scoring.similarity import preprocess_batch

    plain = SimpleNamespace(image_size=(IMAGE_SIZE, IMAGE_SIZE), interpolation="bicubic",
                            resize_mode="shortest", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                            device="cpu", dtype=torch.float32)
    out = [(preprocess_batch(plain, images[i:i + 64]) * 255).round().to(torch.uint8)
           for i in range(0, len(images), 64)]
    return torch.cat(out)


def _views(image, n: int, gen) -> torch.Tensor:
    """``n`` random crops (a third to all of the short side, left-right flips) resized like the filter does."""
    import torch

    h, w = image.shape[:2]
    short = min(h, w)
    crops = []
    for _ in range(n):
        side = int(short * (0.33 + 0.67 * float(torch.rand(1, generator=gen))))
        top = int(torch.randint(h - side + 1, (1,), generator=gen))
        left = int(torch.randint(w - side + 1, (1,), generator=gen))
        crop = image[top:top + side, left:left + side]
        if float(torch.rand(1, generator=gen)) < 0.5:
            crop = crop[:, ::-1]
        crops.append(crop.copy())
    return _resized(crops)


def _synthetic(name: str, n: int, gen) -> torch.Tensor:
    """``n`` frames of a synthetic extra class at random sizes (48-320 px), resized like the rest."""
    import numpy as np
    import torch

    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=gen)))
    frames = []
    for _ in range(n):
        h, w = rng.integers(48, 321, 2)
        colour = rng.random(3) if rng.random() < 0.5 else np.repeat(rng.random(), 3)
        if name == "blank":
            frame = np.broadcast_to(colour, (h, w, 3)).copy()
            if rng.random() < 0.4:   # a faint gradient
                ramp = np.linspace(-1, 1, w if rng.random() < 0.5 else h)
                ramp = ramp[None, :, None] if ramp.size == w else ramp[:, None, None]
                frame = frame + rng.uniform(0.02, 0.1) * ramp
        else:
            shape = (h, w, 3) if rng.random() < 0.5 else (h, w, 1)
            if rng.random() < 0.5:
                frame = rng.random(shape)
            else:
                frame = rng.uniform(0.3, 0.7) + rng.uniform(0.05, 0.3) * rng.standard_normal(shape)
            frame = np.broadcast_to(frame, (h, w, 3))
        frames.append(np.clip(frame, 0, 1).astype(np.float32))
    return _resized(frames)


if __name__ == "__main__":
    from support.pkg import load_package

    load_package()
    if len(sys.argv) == 3 and sys.argv[1] == "--build":
        _build(Path(sys.argv[2]))
    else:
        from support.tiny_clip import tiny_clip as _tiny_clip

        print(summary(_tiny_clip(force="--force" in sys.argv, quiet=True)[3]))
