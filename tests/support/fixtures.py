"""Model fixtures built at test time into a cache directory outside the repository.

Nothing here is downloaded and no weights are ever committed. The cache lives at
``$DTGEN_FIXTURE_CACHE``, else ``~/.cache/dtgen-tests/fixtures``; a version tag in the path
invalidates old builds. A file lock keeps two concurrent test runs from building twice.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from .pkg import ROOT

FIXTURE_VERSION = "v4"
CHECKPOINT = "tiny_sd3.safetensors"                    # fp16, the plain layout
CHECKPOINT_FP8_SCALED = "tiny_sd3_fp8_scaled.safetensors"   # Comfy-Org's sd3.5_*_fp8_scaled layout
LORA = "tiny_sd3_lora.safetensors"
CLIP_ARCH = "ViT-B-32"
CLIP_WEIGHTS = "ViT-B-32-random.safetensors"


def cache_dir() -> Path:
    base = os.environ.get("DTGEN_FIXTURE_CACHE") or Path.home() / ".cache" / "dtgen-tests" / "fixtures"
    path = Path(base) / FIXTURE_VERSION
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _locked(path: Path):
    with open(path / ".build.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def tiny_sd3(comfyui: Path) -> dict[str, Path]:
    """Folders ``checkpoints`` (the tiny SD3 in both layouts: fp16 and scaled fp8) and ``loras``."""
    root = cache_dir()
    ckpt_dir, lora_dir = root / "checkpoints", root / "loras"
    with _locked(root):
        wanted = [ckpt_dir / CHECKPOINT, ckpt_dir / CHECKPOINT_FP8_SCALED, lora_dir / LORA]
        if not all(p.exists() for p in wanted):
            build = root / "build"
            subprocess.run([sys.executable, str(ROOT / "runner" / "demo_models.py"), str(build)],
                           cwd=comfyui, check=True)
            ckpt_dir.mkdir(exist_ok=True)
            lora_dir.mkdir(exist_ok=True)
            for path in wanted:
                os.replace(build / path.name, path)
    return {"checkpoints": ckpt_dir, "loras": lora_dir}


def random_open_clip(arch: str = CLIP_ARCH, name: str = CLIP_WEIGHTS) -> Path:
    """Folder ``open_clip`` holding a random-init open_clip model saved as safetensors."""
    folder = cache_dir() / "open_clip"
    folder.mkdir(exist_ok=True)
    path = folder / name
    with _locked(cache_dir()):
        if not path.exists():
            code = (
                "import sys, torch, open_clip\n"
                "from safetensors.torch import save_file\n"
                "torch.manual_seed(0)\n"
                f"m = open_clip.create_model({arch!r}, pretrained=None)\n"
                "sd = {k: v.contiguous() for k, v in m.state_dict().items()}\n"
                f"save_file(sd, {str(path) + '.tmp'!r})\n"
            )
            subprocess.run([sys.executable, "-c", code], check=True)
            os.replace(str(path) + ".tmp", path)
    return folder


REAL_SET = "tableware_photos"   # the set name the few-shot templates use
REAL_LABELS = ("plate_clean", "plate_heavily_dirty")
_REAL_SOURCES = {"plate_clean": ("coffee", "astronaut", "rocket"),
                 "plate_heavily_dirty": ("chelsea", "retina", "immunohistochemistry")}


def real_photos(dest: Path, per_class: int = 3, caption: str | None = "dtgtableware, a white plate, top-down") -> Path:
    """``dest/<label>/*.jpg``: real photos from scikit-image, standing in for a user's few photos of
    two tableware classes (the pack's labels); the first image gets a ``.txt`` caption."""
    from PIL import Image
    from skimage import data

    for label, names in _REAL_SOURCES.items():
        folder = dest / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            photo = Image.fromarray(getattr(data, names[i % len(names)])()).convert("RGB")
            w, h = photo.size
            side = min(w, h) * (1.0 - 0.1 * (i // len(names)))   # another crop when names repeat
            photo.crop((0, 0, int(side), int(side))).save(folder / f"{label}_{i:02d}.jpg", quality=92)
    if caption is not None:
        (dest / REAL_LABELS[0] / f"{REAL_LABELS[0]}_00.txt").write_text(caption)
    return dest


def real_photo_set() -> Path:
    """Folder ``dtgen_fewshot`` holding the set ``REAL_SET`` (``real_photos``), built once."""
    root = cache_dir()
    folder = root / "dtgen_fewshot"
    with _locked(root):
        if not (folder / REAL_SET).is_dir():
            build = root / "fewshot-build"
            if build.exists():
                import shutil

                shutil.rmtree(build)
            real_photos(build / REAL_SET)
            folder.mkdir(exist_ok=True)
            os.replace(build / REAL_SET, folder / REAL_SET)
    return folder


CUTOUT_SET, BACKGROUND_SET = "tableware_cutouts", "tables"


def cutouts_and_backgrounds(dest: Path) -> tuple[Path, Path]:
    """``dest/cutouts/<label>/`` (an RGBA PNG and a JPEG + ``_mask.png`` per class, cut from
    scikit-image photos by simple shapes) and ``dest/backgrounds/`` (five photos of mixed sizes,
    one grayscale): real pixels, exact masks, made at test time."""
    import numpy as np
    from PIL import Image
    from skimage import data

    def disc(shape, cy, cx, r):
        yy, xx = np.mgrid[:shape[0], :shape[1]]
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r

    cut = dest / "cutouts"
    for label, (name, cy, cx, r) in {"plate_clean": ("coffee", 200, 300, 110),
                                     "plate_heavily_dirty": ("chelsea", 150, 220, 120)}.items():
        photo = getattr(data, name)()
        folder = cut / label
        folder.mkdir(parents=True, exist_ok=True)
        alpha = (disc(photo.shape[:2], cy, cx, r) * 255).astype(np.uint8)
        Image.fromarray(np.dstack([photo, alpha])).save(folder / f"{name}_rgba.png")
        Image.fromarray(photo).save(folder / f"{name}.jpg", quality=92)
        Image.fromarray(disc(photo.shape[:2], cy, cx, r * 0.7).astype(np.uint8) * 255).save(folder / f"{name}_mask.png")
    bg = dest / "backgrounds"
    bg.mkdir(parents=True, exist_ok=True)
    for name in ("grass", "brick", "gravel", "rocket", "astronaut"):
        Image.fromarray(getattr(data, name)()).save(bg / f"{name}.png")
    return cut, bg


def copy_paste_sets() -> dict[str, Path]:
    """Model folders ``dtgen_cutouts`` (set ``CUTOUT_SET``) and ``dtgen_backgrounds`` (set
    ``BACKGROUND_SET``), built once."""
    root = cache_dir()
    folders = {"dtgen_cutouts": root / "dtgen_cutouts", "dtgen_backgrounds": root / "dtgen_backgrounds"}
    with _locked(root):
        if not (folders["dtgen_cutouts"] / CUTOUT_SET).is_dir() or not (folders["dtgen_backgrounds"] / BACKGROUND_SET).is_dir():
            import shutil

            build = root / "copy-paste-build"
            shutil.rmtree(build, ignore_errors=True)
            cut, bg = cutouts_and_backgrounds(build)
            for folder, src, name in ((folders["dtgen_cutouts"], cut, CUTOUT_SET),
                                      (folders["dtgen_backgrounds"], bg, BACKGROUND_SET)):
                folder.mkdir(exist_ok=True)
                shutil.rmtree(folder / name, ignore_errors=True)
                os.replace(src, folder / name)
            shutil.rmtree(build, ignore_errors=True)
    return folders


def checkpoint_like(name: str) -> str:
    """The tiny checkpoint in the layout a template's file name says (``*fp8_scaled*`` -> scaled fp8)."""
    return CHECKPOINT_FP8_SCALED if "fp8_scaled" in name else CHECKPOINT
