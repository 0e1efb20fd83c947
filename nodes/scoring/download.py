"""Explicit, opt-in download of open_clip's named pretrained weights into a model folder.

Only ``fetch_pretrained`` touches the network, and only when the caller asks for it (the CLIP
loader's "(download ...)" entry). The file lands as ``<folder>/<arch>-<tag>.safetensors``:
whatever open_clip fetches (into a temporary folder outside the model folder: Hugging Face
.safetensors / .bin, or OpenAI's TorchScript .pt) is read with the same checks as a local file
(``weights_only=True``), re-saved as safetensors next to the target under a hidden ``.part``
name, synced and renamed into place, so a failed download leaves nothing the loader would list.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .clip_model import read_state_dict, tag_config, check_arch
from .errors import ClipFilterError


def download_target(folder, arch: str, tag: str) -> Path:
    """Where ``fetch_pretrained`` puts (arch, tag): ``<folder>/<arch>-<tag>.safetensors``."""
    safe_tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in tag)
    return Path(folder) / f"{arch}-{safe_tag}.safetensors"


def source_of(cfg: dict) -> str:
    """Human-readable origin of a pretrained config (Hugging Face repo or URL)."""
    if cfg.get("hf_hub"):
        return f"Hugging Face {cfg['hf_hub'].rstrip('/')}"
    return cfg.get("url") or "(no download source known)"


def check_downloadable(arch: str, tag: str) -> tuple[str, dict]:
    """(arch, open_clip pretrained config) if open_clip knows both; else ClipFilterError. Offline."""
    arch = check_arch(arch)
    if not tag:
        raise ClipFilterError("no pretrained tag given; name the weights to download "
                              "(e.g. openai, laion2b_s34b_b79k)", "pretrained_tag")
    return arch, tag_config(arch, tag)


def fetch_pretrained(arch: str, tag: str, folder, download: Callable | None = None) -> Path:
    """Path of ``<folder>/<arch>-<tag>.safetensors``, downloading it first if it is not there.

    ``download(cfg, cache_dir=...) -> path`` defaults to ``open_clip.download_pretrained``; tests
    pass a stand-in. Errors (offline, unknown tag, a file that is not weights) raise
    ``ClipFilterError`` naming the source and the folder, and leave the folder as it was.
    """
    arch, cfg = check_downloadable(arch, tag)
    target = download_target(folder, arch, tag)
    if target.is_file():
        return target
    if download is None:
        from open_clip.pretrained import download_pretrained as download

        _check_reachable(cfg, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClipFilterError(f"cannot create the model folder ({exc})", str(target.parent)) from exc
    # The hub cache goes to the system temp folder, not into the model folder, whose sub-folders
    # ComfyUI lists in the weights menu; only the finished file is staged next to the target.
    with tempfile.TemporaryDirectory(prefix="dtgen-download-") as tmp:
        try:
            fetched = download(cfg, cache_dir=tmp)
        except Exception as exc:  # network, hub and HTTP errors come in many types
            raise ClipFilterError(
                f"could not download {arch} / {tag} weights from {source_of(cfg)} "
                f"({type(exc).__name__}: {str(exc)[:200]}). Offline? Download the file by hand and save it "
                f"at this path (any name in that folder works)", str(target)) from exc
        if not fetched or not Path(fetched).is_file():
            raise ClipFilterError(f"open_clip has no download for {arch} / {tag} "
                                  f"(source: {source_of(cfg)})", "pretrained_tag")
        state = read_state_dict(Path(fetched))
        staged = target.with_name(f".{target.name}.part")   # not a weights suffix: never listed
        try:
            _save_safetensors(state, staged)
            with open(staged, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(staged, target)
        finally:
            staged.unlink(missing_ok=True)
    return target


def _check_reachable(cfg: dict, target: Path) -> None:
    """Fail in seconds when the source host cannot be reached: the hub client would otherwise
    retry for about a minute before giving up. Skipped behind a proxy (direct connects may fail)
    and with HF_HUB_OFFLINE set."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
                                        "HF_HUB_OFFLINE")):   # offline hub: it fails at once anyway
        return
    host = "huggingface.co" if cfg.get("hf_hub") else urlparse(cfg.get("url", "")).hostname
    if os.environ.get("HF_ENDPOINT") and cfg.get("hf_hub"):
        host = urlparse(os.environ["HF_ENDPOINT"]).hostname
    if not host:
        return
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        raise ClipFilterError(
            f"cannot reach {host} to download {source_of(cfg)} ({exc}); this machine looks offline. "
            f"Download the file elsewhere and save it at this path (any name in that folder works)",
            str(target)) from exc


def _save_safetensors(state: dict, path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    # clone: checkpoints may share storage between tensors, which safetensors refuses to save
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    save_file(tensors, str(path))
