"""Pack what the GPU machine lacks into ``.gpu_carry/`` (git-ignored) for ``bench/gpu_check.sh``.

The GPU machine has Python 3.12 with torch, transformers, aiohttp, numpy, pillow, scipy ... but no
ComfyUI, no open_clip and no internet, and the whole tree that travels with the command must stay
under 64 MiB. This copies ComfyUI's source without what an SD3 run never reads (tests, API nodes,
tokenizers of other model families) and downloads cp312 manylinux wheels of the missing packages.
``comfyui-frontend-package`` (53 MB) stays behind: gpu_check starts ComfyUI with
``--front-end-root`` pointing to a stub page, which is all the HTTP API needs.

    python tools/prepare_gpu_carry.py [--comfyui PATH] [--python-version 3.12] [--no-wheels]
Prints the size of everything that would travel (tracked + untracked files + .gpu_carry) and exits
non-zero above the limit.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".gpu_carry"
LIMIT = 64 * 2**20
# What the GPU machine lacks for ComfyUI 0.3.64 + this pack (its own list: torch, transformers,
# safetensors, aiohttp, yarl, pyyaml, pillow, scipy, tqdm, psutil, einops, sentencepiece,
# tokenizers, numpy, requests, timm, huggingface_hub, regex are there). Pinned: one known set.
WHEELS = [
    "av==19.0.2",                 # comfy_api imports it at start-up (video types)
    "torchsde==0.2.6", "trampoline==0.1.2",
    "pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5",
    "pydantic-settings==2.16.3", "python-dotenv==1.2.4",   # comfy_config reads the pack's pyproject
    "open_clip_torch==3.3.0", "ftfy==6.3.1", "wcwidth==0.9.4",
    "websocket-client==1.9.0",    # the benches' websocket client
]
# Not needed to run SD3 through the HTTP API (relative to the ComfyUI folder).
TRIM = ["tests", "tests-unit", ".github", ".ci", "comfy_api_nodes", "comfy/text_encoders/qwen25_tokenizer",
        "comfy/text_encoders/hydit_clip_tokenizer", "comfy/text_encoders/ace_lyrics_tokenizer",
        "comfy/text_encoders/t5_pile_tokenizer", "comfy/text_encoders/byt5_tokenizer"]


def copy_comfyui(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    skip = {(src / t).resolve() for t in TRIM}

    def ignore(folder, names):
        return [n for n in names if n in (".git", "__pycache__") or (Path(folder) / n).resolve() in skip]

    shutil.copytree(src, dst, ignore=ignore, symlinks=True)


def download_wheels(dst: Path, python_version: str) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    plats = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                           "manylinux2014_x86_64", "manylinux1_x86_64")]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                    "--only-binary=:all:", f"--python-version={python_version}", "--implementation=cp", *plats,
                    "-d", str(dst), *WHEELS], check=True)


def travelling_bytes(carry: Path = CARRY) -> int:
    """Tracked + untracked-not-ignored files of the checkout, plus ``carry`` (what the device call copies)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.split(b"\0")
    total = sum((ROOT / os.fsdecode(p)).stat().st_size for p in out if p and (ROOT / os.fsdecode(p)).is_file())
    for base, _, files in os.walk(carry):
        total += sum(os.path.getsize(os.path.join(base, f)) for f in files if not os.path.islink(os.path.join(base, f)))
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", type=Path, default=Path(os.environ.get("COMFYUI_PATH") or
                                                         Path.home() / "comfy" / "ComfyUI"))
    ap.add_argument("--python-version", default="3.12", help="the GPU machine's Python (wheel tags)")
    ap.add_argument("--no-wheels", action="store_true", help="only copy ComfyUI")
    ap.add_argument("--dest", type=Path, default=CARRY, help="where to pack (default .gpu_carry in the checkout)")
    args = ap.parse_args(argv)
    if not (args.comfyui / "main.py").is_file():
        raise SystemExit(f"--comfyui {args.comfyui}: no ComfyUI there (main.py missing)")
    dest = args.dest
    copy_comfyui(args.comfyui, dest / "ComfyUI")
    if not args.no_wheels:
        shutil.rmtree(dest / "wheels", ignore_errors=True)
        download_wheels(dest / "wheels", args.python_version)
    size = travelling_bytes(dest)
    print(f"{dest}: ComfyUI + {len(list((dest / 'wheels').glob('*.whl'))) if (dest / 'wheels').exists() else 0} "
          f"wheels; the tree that travels: {size / 2**20:.1f} MiB of {LIMIT / 2**20:.0f} MiB")
    if size >= LIMIT:
        print("too big for the device call: trim more or carry fewer wheels", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
