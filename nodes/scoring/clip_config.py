"""Custom open_clip architectures described by a config JSON next to the weights file.

A weights file ``<stem>.safetensors`` may come with ``<stem>.json`` or ``open_clip_config.json`` in
the same folder, in the format of open_clip's Hugging Face checkpoints
(``{"model_cfg": {...}, "preprocess_cfg": {...}}``, optional ``"arch": "<name>"``) or as a bare
model config (``{"embed_dim": ..., "vision_cfg": {...}, "text_cfg": {...}}``). The architecture's
name is the config's ``arch``, else the weights file's stem. The model is built as
``open_clip.CLIP(**model_cfg)`` (``CustomTextCLIP`` with ``"custom_text": true``) without touching
open_clip's registry, and tokenized with open_clip's ``SimpleTokenizer`` at the config's
``context_length``: nothing is downloaded, so configs naming timm or Hugging Face towers or
tokenizers are refused.

The file is untrusted input: at most ``MAX_CONFIG_BYTES``, nesting at most ``MAX_DEPTH`` levels,
only open_clip's own field names with scalar values, each size within ``LIMITS``, and the
parameter count estimated from the config (``estimate_params``) at most ``MAX_PARAMS`` -- all
checked before anything is allocated. Every error names the file and the field.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ClipFilterError

HF_CONFIG_NAME = "open_clip_config.json"
MAX_CONFIG_BYTES = 64 * 1024
MAX_DEPTH = 4            # {"model_cfg": {"vision_cfg": {"layers": [..]}}} is 4 levels
MAX_PARAMS = 2_000_000_000
TOKENIZER_VOCAB = 49408  # open_clip's SimpleTokenizer (BPE vocab + start/end of text)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
# Inclusive ranges of the size fields (the estimate below bounds their product).
LIMITS = {
    "embed_dim": (1, 8192),
    "vision_cfg.width": (1, 8192),
    "vision_cfg.layers": (1, 64),          # ViT depth, or each of a ResNet's four stage depths
    "vision_cfg.head_width": (1, 8192),
    "vision_cfg.patch_size": (1, 1024),
    "vision_cfg.image_size": (1, 2048),
    "vision_cfg.mlp_ratio": (0.0, 16.0),
    "vision_cfg.attn_pooler_queries": (1, 1024),
    "vision_cfg.attn_pooler_heads": (1, 256),
    "text_cfg.width": (1, 8192),
    "text_cfg.heads": (1, 256),
    "text_cfg.layers": (1, 64),
    "text_cfg.context_length": (1, 1024),
    "text_cfg.vocab_size": (TOKENIZER_VOCAB, 1_000_000),
    "text_cfg.mlp_ratio": (0.0, 16.0),
}
MAX_IMAGE_TOKENS = 16384   # ViT patches per image (attention memory grows with its square)
_MODEL_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text", "init_logit_scale",
               "init_logit_bias", "nonscalar_logit_scale"}
_WRAPPER_KEYS = {"model_cfg", "preprocess_cfg", "arch"}
# Fields that would fetch or import something else (timm, transformers, a tokenizer download).
_REFUSED = {"vision_cfg.timm_model_name": "timm vision towers",
            "text_cfg.hf_model_name": "Hugging Face text towers",
            "text_cfg.hf_tokenizer_name": "Hugging Face tokenizers",
            "text_cfg.tokenizer_mode": "Hugging Face tokenizer modes",
            "text_cfg.tokenizer_kwargs": "tokenizer options"}
_PREPROCESS = {"mean", "std", "interpolation", "resize_mode", "size", "fill_color"}


@dataclass(frozen=True)
class CustomArch:
    """A validated custom architecture: what ``build_model`` and ``make_tokenizer`` need."""

    name: str
    config_path: Path
    model_cfg: dict
    preprocess: dict            # validated subset: mean, std, interpolation, resize_mode
    params: int                 # estimated parameter count
    sha256: str                 # first 12 hex digits of the config file's sha256

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.model_cfg["vision_cfg"].get("image_size", 224)
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def context_length(self) -> int:
        return int(self.model_cfg["text_cfg"].get("context_length", 77))


def config_path_for(weights: Path) -> Path | None:
    """``<stem>.json`` beside the weights, else ``open_clip_config.json`` there, else None."""
    for candidate in (weights.with_suffix(".json"), weights.parent / HF_CONFIG_NAME):
        if candidate.is_file():
            return candidate
    return None


def config_names_for(weights: Path) -> str:
    return f"{weights.with_suffix('.json').name} or {HF_CONFIG_NAME}"


def read_config(path: Path, weights: Path) -> CustomArch:
    """Parse and validate the config file ``path`` for the weights file ``weights``."""
    where = str(path)
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ClipFilterError(f"config file is {size} bytes; a model config is at most "
                              f"{MAX_CONFIG_BYTES} bytes", where)
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError as exc:
        raise ClipFilterError(f"config JSON is nested too deeply (at most {MAX_DEPTH} levels)", where) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise ClipFilterError(f"config file is not valid JSON ({str(exc)[:200]})", where) from exc
    if not isinstance(data, dict):
        raise ClipFilterError(f"config must be a JSON object, got {type(data).__name__}", where)
    depth = _depth(data)
    if depth > MAX_DEPTH:
        raise ClipFilterError(f"config JSON is nested {depth} levels deep; at most {MAX_DEPTH}", where)

    if "model_cfg" in data:
        _known(data, _WRAPPER_KEYS, "", where, "a config file with model_cfg")
        model_cfg, preprocess_cfg, name = data["model_cfg"], data.get("preprocess_cfg") or {}, data.get("arch")
        prefix = "model_cfg."
    else:
        model_cfg, preprocess_cfg, name, prefix = data, {}, None, ""
    if name is None:
        name = weights.stem
        if not _NAME.match(name):
            raise ClipFilterError(f"the weights file's stem {name!r} cannot name an architecture "
                                  "(letters, digits, . _ + -); give the config an \"arch\" field", where)
    elif not isinstance(name, str) or not _NAME.match(name):
        raise ClipFilterError(f"field arch={name!r} must be 1-100 letters, digits, . _ + - "
                              "(starting with a letter or digit)", where)
    cfg = _check_model_cfg(model_cfg, prefix, where)
    preprocess = _check_preprocess(preprocess_cfg, where)
    params = estimate_params(cfg)
    if params > MAX_PARAMS:
        raise ClipFilterError(f"config describes a model of about {params / 1e6:,.0f} M parameters; "
                              f"at most {MAX_PARAMS / 1e6:,.0f} M are allowed (refused before building)",
                              where)
    return CustomArch(name=name, config_path=path, model_cfg=cfg, preprocess=preprocess, params=params,
                      sha256=hashlib.sha256(raw).hexdigest()[:12])


def build_model(arch: CustomArch):
    """A random-init model of ``arch`` (float32, CPU, train mode)."""
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = dict(arch.model_cfg)
    cls = CustomTextCLIP if cfg.pop("custom_text", False) else CLIP
    try:
        return cls(**cfg)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError, ZeroDivisionError) as exc:
        raise ClipFilterError(f"open_clip cannot build the model this config describes "
                              f"({type(exc).__name__}: {str(exc)[:200]})", str(arch.config_path)) from exc


def make_tokenizer(arch: CustomArch):
    """open_clip's BPE tokenizer at the config's context length (no download)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=arch.context_length)


def estimate_params(cfg: dict) -> int:
    """Parameter count of open_clip's CLIP for a validated model config (within ~1 %)."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    embed = cfg["embed_dim"]
    v = CLIPVisionCfg(**cfg["vision_cfg"])
    t = CLIPTextCfg(**cfg["text_cfg"])
    total = 1 + (1 if cfg.get("init_logit_bias") is not None else 0)   # logit scale / bias
    if isinstance(v.layers, (list, tuple)):
        total += _resnet_params(v, embed)
    else:
        w = v.width
        h_img, w_img = (v.image_size, v.image_size) if isinstance(v.image_size, int) else v.image_size
        tokens = (h_img // v.patch_size) * (w_img // v.patch_size)
        total += 3 * v.patch_size ** 2 * w + w + (tokens + 1) * w      # patchify, class token, positions
        total += 0 if v.no_ln_pre else 2 * w
        total += v.layers * _block_params(w, v.mlp_ratio, v.ls_init_value)
        total += 2 * w                                                # ln_post
        if v.attentional_pool:
            total += v.attn_pooler_queries * embed + 2 * embed * embed + 2 * w * embed + 6 * embed + 2 * w
            total += embed * embed                                    # proj after the pooler
        else:
            total += w * embed
    w = t.width
    total += t.vocab_size * w + t.context_length * w + t.layers * _block_params(w, t.mlp_ratio, t.ls_init_value)
    total += 2 * w + (w * embed if t.proj_type != "none" else 0) + (embed if t.proj_bias else 0)
    total += w if t.embed_cls else 0
    return int(total)


def _block_params(w: int, mlp_ratio: float, ls_init) -> int:
    m = int(w * mlp_ratio)
    return 4 * w * w + 2 * w * m + 9 * w + m + (2 * w if ls_init is not None else 0)


def _resnet_params(v, embed: int) -> int:
    w = v.width
    half = w // 2
    total = 3 * half * 9 + half * half * 9 + half * w * 9 + 2 * (half + half + w)   # stem + BN
    inplanes = w
    for stage, blocks in enumerate(v.layers):
        planes = w * 2 ** stage
        for block in range(blocks):
            total += inplanes * planes + 9 * planes * planes + planes * 4 * planes + 2 * (6 * planes)
            if block == 0 and (stage > 0 or inplanes != 4 * planes):
                total += inplanes * 4 * planes + 2 * 4 * planes
            inplanes = 4 * planes
    dim = w * 32
    size = v.image_size if isinstance(v.image_size, int) else v.image_size[0]
    total += ((size // 32) ** 2 + 1) * dim + 3 * (dim * dim + dim) + dim * embed + embed
    return total


# ------------------------------------------------------------------------------- validation
def _no_constant(token: str):
    raise ValueError(f"{token} is not a number JSON allows")


def _depth(value, level: int = 0) -> int:
    if isinstance(value, dict):
        return max([_depth(v, level + 1) for v in value.values()], default=level + 1)
    if isinstance(value, list):
        return max([_depth(v, level + 1) for v in value], default=level + 1)
    return level


def _known(obj: dict, allowed: set, prefix: str, where: str, what: str) -> None:
    unknown = sorted(k for k in obj if k not in allowed)
    if unknown:
        raise ClipFilterError(f"unknown field {prefix}{unknown[0]} in {what}; accepted: "
                              f"{', '.join(sorted(allowed))}", where)


def _check_model_cfg(cfg, prefix: str, where: str) -> dict:
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    if not isinstance(cfg, dict):
        raise ClipFilterError(f"{prefix.rstrip('.') or 'config'} must be an object", where)
    if "multimodal_cfg" in cfg:
        raise ClipFilterError(f"field {prefix}multimodal_cfg: CoCa models are not supported", where)
    _known(cfg, _MODEL_KEYS, prefix, where, "a model config")
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in cfg:
            raise ClipFilterError(f"field {prefix}{key} is missing (a model config needs embed_dim, "
                                  "vision_cfg and text_cfg)", where)
    out = {"embed_dim": _int(cfg["embed_dim"], "embed_dim", prefix, where)}
    for key in ("quick_gelu", "custom_text", "nonscalar_logit_scale"):
        if key in cfg:
            out[key] = _bool(cfg[key], key, prefix, where)
    for key in ("init_logit_scale", "init_logit_bias"):
        if key in cfg and not (key == "init_logit_bias" and cfg[key] is None):
            out[key] = _number(cfg[key], key, prefix, where, lo=-100.0, hi=100.0)
    out["vision_cfg"] = _check_tower(cfg["vision_cfg"], "vision_cfg", CLIPVisionCfg, prefix, where)
    out["text_cfg"] = _check_tower(cfg["text_cfg"], "text_cfg", CLIPTextCfg, prefix, where)
    _check_shapes(out, prefix, where)
    return out


def _check_tower(tower, name: str, cfg_class, prefix: str, where: str) -> dict:
    if not isinstance(tower, dict):
        raise ClipFilterError(f"field {prefix}{name} must be an object", where)
    fields = {f.name for f in dataclasses.fields(cfg_class)}
    _known(tower, fields, f"{prefix}{name}.", where, f"{name} (open_clip's {cfg_class.__name__})")
    out = {}
    for key, value in tower.items():
        field = f"{name}.{key}"
        if field in _REFUSED and value:
            raise ClipFilterError(f"field {prefix}{field}={value!r}: {_REFUSED[field]} are not supported "
                                  "in a custom config (they need other packages or a download)", where)
        if key == "output_tokens" and value:
            raise ClipFilterError(f"field {prefix}{field}=true is not supported: the filter needs the "
                                  "pooled embedding only", where)
        if value is None and key == "patch_size":
            pass                                   # ResNet configs say null; checked for a ViT below
        elif field in LIMITS and key not in ("layers", "image_size"):
            lo, hi = LIMITS[field]
            value = (_number if isinstance(lo, float) else _int)(value, field, prefix, where, lo=lo, hi=hi)
        elif key == "layers" and name == "vision_cfg":
            value = _int_or_list(value, field, prefix, where, lengths=(4,))
        elif key == "image_size":
            value = _int_or_list(value, field, prefix, where, lengths=(2,))
        elif key in ("act_kwargs", "norm_kwargs"):
            value = _flat_kwargs(value, field, prefix, where)
        elif value is not None and not isinstance(value, (bool, int, float, str)):
            raise ClipFilterError(f"field {prefix}{field} must be a number, string, boolean or null, "
                                  f"got {type(value).__name__}", where)
        elif isinstance(value, str) and len(value) > 64:
            raise ClipFilterError(f"field {prefix}{field} is a string of {len(value)} characters "
                                  "(at most 64)", where)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ClipFilterError(f"field {prefix}{field} is not finite", where)
        out[key] = value
    return out


def _check_shapes(cfg: dict, prefix: str, where: str) -> None:
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    width = v.get("width", 768)
    head_width = v.get("head_width", 64)
    if isinstance(v.get("layers", 12), int):
        if width % head_width:
            raise ClipFilterError(f"field {prefix}vision_cfg.width={width} must be a multiple of "
                                  f"head_width={head_width}", where)
        size = v.get("image_size", 224)
        h, w = (size, size) if isinstance(size, int) else size
        patch = v.get("patch_size", 16)
        if patch is None:
            raise ClipFilterError(f"field {prefix}vision_cfg.patch_size is null; a ViT needs it", where)
        if patch > min(h, w):
            raise ClipFilterError(f"field {prefix}vision_cfg.patch_size={patch} exceeds image_size={size}",
                                  where)
        tokens = (h // patch) * (w // patch)
        if tokens > MAX_IMAGE_TOKENS:
            raise ClipFilterError(f"fields {prefix}vision_cfg.image_size={size} / patch_size={patch} give "
                                  f"{tokens} patches per image; at most {MAX_IMAGE_TOKENS}", where)
    elif (width * 32) % head_width:
        raise ClipFilterError(f"field {prefix}vision_cfg.head_width={head_width} must divide the ResNet "
                              f"feature width 32 * width = {width * 32}", where)
    twidth, heads = t.get("width", 512), t.get("heads", 8)
    if twidth % heads:
        raise ClipFilterError(f"field {prefix}text_cfg.width={twidth} must be a multiple of heads={heads}",
                              where)


def _check_preprocess(cfg, where: str) -> dict:
    if not isinstance(cfg, dict):
        raise ClipFilterError("field preprocess_cfg must be an object", where)
    _known(cfg, _PREPROCESS, "preprocess_cfg.", where, "preprocess_cfg")
    out = {}
    for key in ("mean", "std"):
        if key in cfg:
            value = cfg[key]
            if not isinstance(value, list) or len(value) != 3:
                raise ClipFilterError(f"field preprocess_cfg.{key} must be a list of 3 numbers", where)
            lo = 1e-6 if key == "std" else -10.0
            out[key] = tuple(_number(x, key, "preprocess_cfg.", where, lo=lo, hi=10.0) for x in value)
    for key, allowed in (("interpolation", ("bicubic", "bilinear")),
                         ("resize_mode", ("shortest", "longest", "squash"))):
        if key in cfg and cfg[key] is not None:
            if cfg[key] not in allowed:
                raise ClipFilterError(f"field preprocess_cfg.{key}={cfg[key]!r}; use one of {allowed}", where)
            out[key] = cfg[key]
    return out


def _int(value, field: str, prefix: str, where: str, lo: int = 1, hi: int = 8192) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ClipFilterError(f"field {prefix}{field}={value!r} must be an integer", where)
    if not lo <= value <= hi:
        raise ClipFilterError(f"field {prefix}{field}={value} is outside [{lo}, {hi}]", where)
    return value


def _number(value, field: str, prefix: str, where: str, lo: float, hi: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ClipFilterError(f"field {prefix}{field}={value!r} must be a finite number", where)
    if not lo <= value <= hi:
        raise ClipFilterError(f"field {prefix}{field}={value} is outside [{lo:g}, {hi:g}]", where)
    return value


def _bool(value, field: str, prefix: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise ClipFilterError(f"field {prefix}{field}={value!r} must be true or false", where)
    return value


def _int_or_list(value, field: str, prefix: str, where: str, lengths: tuple):
    lo, hi = LIMITS[field]
    if isinstance(value, list):
        if len(value) not in lengths:
            raise ClipFilterError(f"field {prefix}{field} must be an integer or a list of "
                                  f"{' or '.join(map(str, lengths))} integers, got {len(value)}", where)
        return [_int(x, field, prefix, where, lo=lo, hi=hi) for x in value]
    return _int(value, field, prefix, where, lo=lo, hi=hi)


def _flat_kwargs(value, field: str, prefix: str, where: str):
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 8 or not all(
            isinstance(k, str) and (v is None or isinstance(v, (bool, int, float)) or
                                    (isinstance(v, str) and len(v) <= 64)) for k, v in value.items()):
        raise ClipFilterError(f"field {prefix}{field} must be an object of at most 8 scalar options", where)
    return dict(value)


def describe(arch: CustomArch) -> dict[str, Any]:
    return {"config": arch.config_path.name, "config_sha256": arch.sha256, "params_estimate": arch.params}
