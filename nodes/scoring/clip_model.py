"""Load an open_clip model from a local weights file (never downloads) and cache it per process.

``load_clip`` builds the architecture with ``open_clip.create_model(arch, pretrained=None)`` and
loads the state dict itself, so a wrong file gets an error that says what is wrong with it
(missing / unexpected / shape-mismatched key counts) instead of a long PyTorch traceback.

An architecture that open_clip does not know is built from a config JSON next to the weights
(``<weights stem>.json`` or ``open_clip_config.json``, see ``clip_config``): e.g. a small CLIP
trained for a test. A built-in name always means open_clip's own config.
"""
from __future__ import annotations

import difflib
import logging
import os
import pickle
import threading
from collections import OrderedDict
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.hashing import sha256_file
from . import clip_config
from .errors import ClipFilterError

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".bin", ".pth")
_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
           "bf16": "bfloat16", "bfloat16": "bfloat16"}


@dataclass(frozen=True, eq=False)   # eq=False: hashed by identity, usable as a cache key
class ClipBundle:
    """A loaded CLIP model with everything needed to preprocess, tokenize and cite it."""

    model: Any                      # open_clip CLIP module, eval mode
    tokenizer: Any                  # open_clip tokenizer: list[str] -> LongTensor
    arch: str                       # e.g. "ViT-B-32"
    weights_name: str               # file name of the weights
    weights_sha256: str             # first 12 hex digits of the file's sha256
    image_size: tuple[int, int]     # model input (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"  # "bicubic" | "bilinear"
    resize_mode: str = "shortest"   # "shortest" | "longest" | "squash" (open_clip semantics)
    device: str = "cpu"
    dtype: Any = None               # torch.dtype of the weights
    extra: dict = field(default_factory=dict)

    @property
    def precision(self) -> str:
        """"fp32" | "fp16" | "bf16": what the encoders compute in (the weights' dtype)."""
        from .precision import precision_of

        return precision_of(self.dtype)

    def describe(self) -> dict:
        """JSON-friendly facts for a dataset manifest."""
        facts = {"arch": self.arch, "weights": self.weights_name, "sha256": self.weights_sha256,
                 "image_size": list(self.image_size), "device": self.device,
                 "dtype": str(self.dtype).replace("torch.", ""), "precision": self.precision}
        custom = self.extra.get("custom")
        if custom:   # an architecture built from a config JSON: which one
            facts.update(config=custom["config"], config_sha256=custom["config_sha256"])
        return facts


_CACHE: OrderedDict[tuple, ClipBundle] = OrderedDict()   # least recently used first
_CACHE_LOCK = threading.Lock()
CACHE_SIZE = 2   # models kept loaded: switching back and forth between two costs no reload


def cached_bundles() -> list[ClipBundle]:
    """The bundles currently cached (their memory is freed once evicted and no caller holds them)."""
    with _CACHE_LOCK:
        return list(_CACHE.values())


def load_clip(arch: str, weights_path: str, device: str = "cpu", dtype=None,
              pretrained_tag: str | None = None, precision: str | None = None) -> ClipBundle:
    """Load ``arch`` with weights from the local file ``weights_path``; cached per process.

    ``dtype``: a torch dtype or "fp32"/"fp16"/"bf16" (default float32): the model is cast to it,
    so it is the precision the encoders run in (``precision.resolve_precision`` picks one that
    the device can run). Each (file, device, dtype) is cached separately.
    ``precision`` (instead of ``dtype``): auto | fp32 | fp16 | bf16, resolved for ``device`` by
    ``precision.resolve_precision`` (auto: fp16 on a GPU, bf16 on a CPU with native bf16, else
    fp32; ClipFilterError for a choice the device cannot run).
    ``pretrained_tag`` (optional, e.g. "openai"): the open_clip tag the file came from; it only
    selects that tag's preprocessing (mean/std, interpolation) and QuickGELU setting, nothing is
    downloaded. Without it the architecture's defaults are used (OpenAI mean/std, bicubic).
    ``arch`` not built into open_clip: the config JSON next to the weights must name it (its
    ``arch`` field, else the weights file's stem); its ``preprocess_cfg`` sets the preprocessing
    and ``pretrained_tag`` is ignored (open_clip has no tags for it).
    """
    if precision is not None:
        if dtype is not None:
            raise ClipFilterError("give dtype or precision, not both", "precision")
        from .precision import resolve_precision

        dtype = resolve_precision(precision, device)
    torch_dtype = _resolve_dtype(dtype)
    builtin = _is_builtin(arch)
    if not builtin and not isinstance(arch, str):
        raise _unknown_arch(arch, None)
    path = _check_file(weights_path)
    custom = None if builtin else resolve_custom(arch, path)
    stat = path.stat()
    key = (arch, str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(device), str(torch_dtype),
           pretrained_tag if custom is None else None)
    if custom is not None:
        cstat = custom.config_path.stat()
        key += (str(custom.config_path.resolve()), cstat.st_mtime_ns, cstat.st_size)
    with _CACHE_LOCK:
        bundle = _CACHE.get(key)
        if bundle is None:
            if custom is None:
                bundle = _load_uncached(arch, path, str(device), torch_dtype, pretrained_tag)
            else:
                bundle = _load_custom(custom, path, str(device), torch_dtype, pretrained_tag)
            _CACHE[key] = bundle
            while len(_CACHE) > CACHE_SIZE:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
    return bundle


def _load_uncached(arch, path: Path, device, torch_dtype, pretrained_tag) -> ClipBundle:
    import open_clip

    tag_cfg = tag_config(arch, pretrained_tag)
    state = read_state_dict(path)   # first: an unreadable file fails before the slow model build
    # pretrained_text/image=False: never let open_clip fetch tower weights from a hub.
    with _quiet_random_init_warning():
        model = open_clip.create_model(arch, pretrained=None, pretrained_text=False,
                                       pretrained_image=False, device="cpu",
                                       force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)))
    _load_strict(model, state, arch, path)
    model = model.to(device=device, dtype=torch_dtype).eval()

    pp = dict(open_clip.get_model_preprocess_cfg(model))
    for key in ("mean", "std", "interpolation", "resize_mode"):
        if key in tag_cfg:
            pp[key] = tag_cfg[key]
    size = pp.get("size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    return ClipBundle(
        model=model, tokenizer=open_clip.get_tokenizer(arch), arch=arch,
        weights_name=path.name, weights_sha256=_sha256_short(path), image_size=size,
        mean=tuple(float(v) for v in pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(float(v) for v in pp.get("std", open_clip.OPENAI_DATASET_STD)),
        interpolation=pp.get("interpolation") or "bicubic",
        resize_mode=pp.get("resize_mode") or "shortest",
        device=device, dtype=torch_dtype,
        extra={"pretrained_tag": pretrained_tag} if pretrained_tag else {},
    )


def _load_custom(custom: clip_config.CustomArch, path: Path, device, torch_dtype,
                 pretrained_tag) -> ClipBundle:
    import open_clip

    state = read_state_dict(path)   # first: an unreadable file fails before the model build
    model = clip_config.build_model(custom)
    _load_strict(model, state, custom.name, path, config=custom.config_path)
    model = model.to(device=device, dtype=torch_dtype).eval()
    pp = custom.preprocess
    extra = {"custom": clip_config.describe(custom)}
    if pretrained_tag:
        extra["pretrained_tag_ignored"] = pretrained_tag
    return ClipBundle(
        model=model, tokenizer=clip_config.make_tokenizer(custom), arch=custom.name,
        weights_name=path.name, weights_sha256=_sha256_short(path), image_size=custom.image_size,
        mean=tuple(float(v) for v in pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(float(v) for v in pp.get("std", open_clip.OPENAI_DATASET_STD)),
        interpolation=pp.get("interpolation", "bicubic"), resize_mode=pp.get("resize_mode", "shortest"),
        device=device, dtype=torch_dtype, extra=extra,
    )


@contextmanager
def _quiet_random_init_warning():
    """open_clip warns "initialized randomly" because we load the weights ourselves right after."""
    class _Drop(logging.Filter):
        def filter(self, record):
            return "initialized randomly" not in record.getMessage()

    drop = _Drop()
    logging.getLogger().addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(drop)


def _resolve_dtype(dtype):
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower().replace("torch.", ""))
    if name is None:
        raise ClipFilterError(f"unknown dtype {dtype!r}; use one of {sorted(set(_DTYPES))}", "dtype")
    return getattr(torch, name)


def _is_builtin(arch) -> bool:
    import open_clip

    return isinstance(arch, str) and arch in open_clip.list_models()


def check_arch(arch: str, weights_path=None) -> str:
    """``arch`` if open_clip knows it, or (with ``weights_path``) if the config JSON next to the
    weights describes it; else ClipFilterError naming a few close names."""
    if _is_builtin(arch):
        return arch
    if weights_path:
        path = Path(os.path.expanduser(str(weights_path)))
        if path.is_file():
            return resolve_custom(arch, path).name
    raise _unknown_arch(arch, Path(os.path.expanduser(str(weights_path))) if weights_path else None)


def resolve_custom(arch: str, path: Path | None) -> clip_config.CustomArch:
    """The validated custom architecture ``arch`` from the config next to the weights ``path``."""
    config = clip_config.config_path_for(path) if path is not None else None
    if config is None:
        raise _unknown_arch(arch, path)
    custom = clip_config.read_config(config, path)
    if custom.name != arch:
        raise ClipFilterError(f"the config next to the weights describes architecture {custom.name!r}, "
                              f"not {arch!r}; pass arch={custom.name!r}", str(config))
    return custom


def _unknown_arch(arch, path: Path | None) -> ClipFilterError:
    import open_clip

    known = open_clip.list_models()
    close = difflib.get_close_matches(str(arch), known, n=5, cutoff=0.5)
    hint = f"; close names: {', '.join(close)}" if close else f"; {len(known)} are known, e.g. ViT-B-32"
    custom = (f"; a custom architecture needs a config JSON next to the weights "
              f"({clip_config.config_names_for(path)} in {str(path.parent)!r})" if path is not None else
              "; a custom architecture needs a config JSON next to its weights file")
    return ClipFilterError(f"unknown CLIP architecture {arch!r}{hint}{custom}", "arch")


def _check_file(weights_path) -> Path:
    if not weights_path:
        raise ClipFilterError("no CLIP weights file given", "weights_path")
    path = Path(os.path.expanduser(str(weights_path)))
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix not in SAFE_SUFFIXES + PICKLE_SUFFIXES:
            raise ClipFilterError(
                f"unsupported weights file type {suffix or '(none)'!r}; use .safetensors "
                f"(preferred) or {'/'.join(PICKLE_SUFFIXES)}", str(path))
        return path
    folder = path.parent
    if not folder.is_dir():
        raise ClipFilterError(f"folder {str(folder)!r} does not exist (expected the weights file "
                              f"{path.name!r} in it)", str(path))
    present = sorted(p.name for p in folder.iterdir()
                     if p.suffix.lower() in SAFE_SUFFIXES + PICKLE_SUFFIXES)
    listing = f"; weights files there: {', '.join(present[:8])}" if present else \
        "; the folder holds no .safetensors/.pt/.bin/.pth file"
    raise ClipFilterError(f"CLIP weights file {path.name!r} not found in folder "
                          f"{str(folder)!r}{listing}", str(path))


def read_state_dict(path: Path) -> dict:
    """Read tensors from ``path``; safetensors directly, pickles only with weights_only=True."""
    if path.stat().st_size == 0:
        raise ClipFilterError("weights file is empty (0 bytes); the download or copy was cut short",
                              str(path))
    try:
        if path.suffix.lower() in SAFE_SUFFIXES:
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = _torch_load(path)
    except ClipFilterError:
        raise
    except Exception as exc:  # safetensors / pickle / zip errors all mean "unreadable"
        raise ClipFilterError(f"weights file is corrupt or not a weights file "
                              f"({type(exc).__name__}: {str(exc)[:200]})", str(path)) from exc

    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ClipFilterError("weights file holds no tensors (expected a state dict)", str(path))
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _torch_load(path: Path):
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own text advises weights_only=False, which would run such a file's code: never shown
        text = str(exc).lower()
        if "unsupported global" in text or "is blocked" in text:
            raise ClipFilterError("file holds Python objects besides tensors; refusing to unpickle it "
                                  "(torch.load weights_only=True). Convert it to .safetensors",
                                  str(path)) from exc
        raise ClipFilterError("weights file is corrupt or not a weights file (torch's safe loader, "
                              "weights_only=True, cannot read it; it was not unpickled). Use a .safetensors "
                              "file", str(path)) from exc
    except RuntimeError as exc:
        # OpenAI's original ViT-B-32.pt etc. are TorchScript archives, not pickles.
        if "TorchScript" not in str(exc) and "torch.jit.load" not in str(exc):
            raise
    state = torch.jit.load(str(path), map_location="cpu").state_dict()
    for key in ("input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    return state


def _load_strict(model, state: dict, arch: str, path: Path, config: Path | None = None) -> None:
    """Load ``state`` into ``model``; on any key/shape difference explain the mismatch."""
    from open_clip.factory import convert_state_dict

    with suppress(KeyError, ValueError, RuntimeError):   # unknown layout: compare it as is
        state = convert_state_dict(model, state)   # timm / big_vision layouts -> open_clip
    expected = model.state_dict()
    if "logit_scale" in state and state["logit_scale"].ndim != expected["logit_scale"].ndim:
        state["logit_scale"] = state["logit_scale"].reshape(expected["logit_scale"].shape)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        examples = (missing[:2] + unexpected[:2] + mismatched[:2])
        raise ClipFilterError(
            f"weights do not fit architecture {arch!r}: {len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(mismatched)} shape-mismatched of {len(expected)} expected keys "
            f"(e.g. {', '.join(examples)}); the file is probably for another architecture"
            + (f" than the one config {str(config)!r} describes" if config is not None else ""), str(path))
    model.load_state_dict(state, strict=True)


def tag_config(arch: str, tag: str | None) -> dict:
    if not tag:
        return {}
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ClipFilterError(f"unknown pretrained tag {tag!r} for {arch}; known: {', '.join(tags[:10])}",
                              "pretrained_tag")
    return cfg


def _sha256_short(path: Path, length: int = 12) -> str:
    return sha256_file(path)[:length]


def cache_dirs() -> list[Path]:
    """Folders where open_clip / Hugging Face keep downloads (searched, never written)."""
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    dirs.append(Path.home() / ".cache" / "clip")
    return list(dict.fromkeys(dirs))


def find_cached_weights(arch: str, pretrained_tag: str) -> str | None:
    """Path of an already-downloaded weights file for (arch, tag), or None. Never downloads.

    Looks in the open_clip URL cache (~/.cache/clip) and the Hugging Face hub cache
    (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub), preferring safetensors. Pass the same
    tag to ``load_clip(..., pretrained_tag=tag)`` so preprocessing and QuickGELU match the file.
    """
    arch = check_arch(arch)
    cfg = tag_config(arch, pretrained_tag)
    names = []
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)   # "org/repo/" -> ("org/repo", "")
        candidates = [filename] if filename else []
        candidates += ["open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                       "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        folder = "models--" + repo.replace("/", "--")
        for root in cache_dirs():
            for name in candidates:
                names.extend(sorted((root / folder / "snapshots").glob(f"*/{name}")))
    url = cfg.get("url", "")
    if url:
        names.extend(root / os.path.basename(url) for root in cache_dirs())
    for candidate in names:
        if candidate.is_file():
            return str(candidate)
    return None
