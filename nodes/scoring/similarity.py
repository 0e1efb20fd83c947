"""Batched CLIP scoring: images and texts -> L2-normalised embeddings -> cosine similarities.

Preprocessing runs in torch on the model's device, a batch at a time (on a GPU one upload per
image size; on the CPU image by image from the caller's pixels into one model-input buffer, see
``model_input``), and follows open_clip's eval transform (``Resize(shortest side, bicubic)`` ->
``CenterCrop`` -> ``Normalize(mean, std)``): the resize is ``F.interpolate(..., mode="bicubic",
antialias=True)``, whose kernel is PIL's (a = -0.5, widened when downscaling), output size and
crop offsets are computed exactly as torchvision does. Known difference: open_clip works on an
8-bit PIL image and rounds to 8 bits again after resizing; here pixels stay float32 throughout
(clamped to [0, 1] after the bicubic overshoot, as PIL does). On photos the model inputs differ
by well under one 8-bit step on average (a few steps at sharp edges) and the embeddings by cosine
> 0.9999 (tests/unit/scoring/test_similarity.py, test_precision.py); scores agree to ~2e-4.

The encoders run in the bundle's precision (``bundle.dtype``: fp32, or fp16 / bf16 weights, see
``precision``); embeddings always come out as float32 and are normalised in float32.

Accepted image inputs (each item of the list, or one N x H x W x C array):
H x W x 3 float in [0, 1] (the normal case), H x W or H x W x 1 grayscale (repeated to RGB),
H x W x 4 RGBA (alpha dropped), uint8 (divided by 255). Images of different sizes may be mixed.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..common.records import ScoredItem
from .errors import ClipFilterError
from .precision import precision_of

TEXT_SIDES = ("prompt", "class_text", "both")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)   # open_clip.OPENAI_DATASET_MEAN / STD
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_RANGE_TOLERANCE = 1e-3   # float images a hair outside [0, 1] (e.g. after a VAE) are clamped


def prepare_images(images) -> list[np.ndarray]:
    """Validate and convert inputs to a list of H x W x 3 float32 arrays in [0, 1]."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if images is None or len(images) == 0:
        raise ClipFilterError("no images to score (empty list)", "images")
    return [_prepare_one(img, i) for i, img in enumerate(images)]


def _prepare_one(img, index: int) -> np.ndarray:
    where = f"image {index}"
    try:
        arr = np.asarray(img)
    except Exception as exc:
        raise ClipFilterError(f"not an array ({type(img).__name__})", where) from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ClipFilterError(f"expected H x W x 3 (or gray H x W / x1, RGBA x4), got shape "
                              f"{arr.shape}", where)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ClipFilterError(f"image has no pixels (shape {arr.shape})", where)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype == np.uint8:   # one pass, one buffer; the same values as astype(float32) / 255
        return np.divide(arr, np.float32(255.0), dtype=np.float32)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ClipFilterError(f"pixel type {arr.dtype} not supported; use float in [0, 1] or uint8",
                              where)
    arr = arr.astype(np.float32, copy=False)
    lo, hi = _min_max(arr)   # NaN propagates; +-Inf shows as an extreme
    if not (np.isfinite(lo) and np.isfinite(hi)):
        bad = int((~np.isfinite(arr)).sum())
        raise ClipFilterError(f"{bad} pixel values are NaN or Inf", where)
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ClipFilterError(f"pixel values span [{lo:.3g}, {hi:.3g}]; expected [0, 1]", where)
    return arr if 0.0 <= lo and hi <= 1.0 else np.clip(arr, 0.0, 1.0)


def _tensor_view(arr: np.ndarray):
    """A torch view of ``arr`` without a copy (a copy only where numpy's strides are negative, e.g.
    a flipped array, which torch cannot view)."""
    import torch

    return torch.from_numpy(arr if all(s >= 0 for s in arr.strides) else np.ascontiguousarray(arr))


def _min_max(arr: np.ndarray) -> tuple[float, float]:
    """min and max of a float32 array in one pass (torch.aminmax on a view: one read of the
    pixels instead of numpy's two, profiled 3x faster on 1024² images)."""
    import torch

    lo, hi = torch.aminmax(_tensor_view(arr))
    return float(lo), float(hi)


def resized_size(h: int, w: int, target: tuple[int, int], mode: str) -> tuple[int, int]:
    """Output (h, w) of open_clip's resize step for an h x w image."""
    th, tw = target
    if mode == "squash":
        return th, tw
    if mode == "longest":
        scale = min(th / h, tw / w)
        return max(1, round(h * scale)), max(1, round(w * scale))
    if th == tw:  # torchvision Resize(int): short side -> size, long side truncated
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(th * long / short)
        return (new_long, th) if w <= h else (th, new_long)
    scale = max(th / h, tw / w)
    return max(th, round(h * scale)), max(tw, round(w * scale))


def preprocess_batch(bundle, arrays: Sequence[np.ndarray]):
    """Model input [N, 3, H, W] in ``bundle.dtype`` on ``bundle.device`` for already-validated
    H x W x 3 float32 images: one upload per image size, then resize, crop and normalise on the
    device in float32, batched (``model_input``)."""
    return model_input(bundle, arrays)


def model_input(spec, images):
    """``images`` (a list of H x W x 3 float32 arrays in [0, 1], sizes may differ, or one
    N x H x W x 3 float tensor in [0, 1] on any device) -> float [N, 3, th, tw] in ``spec.dtype``
    on ``spec.device``. ``spec``: image_size, mean, std, interpolation, resize_mode, device, dtype
    (a ClipBundle).

    On the CPU each image is resized on its own, straight from the caller's pixels (a zero-copy
    channels-last view of the array or of the batch tensor), into one preallocated model-input
    buffer that is then clamped and normalised in place: no stacked copy of the full-size batch
    (for 64 images at 1024² that copy alone was 805 MB and about as long as the resize), no second
    buffer. Profiled (bench/bench_clip_filter.py): per image, the antialiased resize of a 1024²
    float image is also faster than on the whole stacked batch (it stays in cache).
    On other devices same-size images go up as one N x H x W x C tensor (one upload per size) and
    are resized as a batch in its channels-last layout."""
    import torch

    th, tw = spec.image_size
    device = torch.device(spec.device)
    n = images.shape[0] if isinstance(images, torch.Tensor) else len(images)
    out = torch.empty((n, 3, th, tw), dtype=torch.float32, device=device)
    if device.type == "cpu":
        for i in range(n):
            x = images[i] if isinstance(images, torch.Tensor) else _tensor_view(images[i])
            out[i] = _resize_crop(x[None].to(dtype=torch.float32), spec, th, tw)[0]
    else:
        if isinstance(images, torch.Tensor):
            groups = [(None, images)]
        else:
            by_size: dict[tuple[int, int], list[int]] = {}
            for i, arr in enumerate(images):
                by_size.setdefault(arr.shape[:2], []).append(i)
            groups = [(idx, torch.from_numpy(np.stack([images[i] for i in idx])) if len(idx) > 1
                       else _tensor_view(images[idx[0]])[None]) for idx in by_size.values()]
        for idx, x in groups:
            part = _resize_crop(x.to(device=device, dtype=torch.float32), spec, th, tw)
            if idx is None:
                out.copy_(part)
            else:
                out[torch.tensor(idx, device=device)] = part
    # ``out`` is this call's own buffer (never a view of the caller's images): in place. Clamp:
    # the bicubic overshoot, as PIL clips; padding (0) and inputs are in range
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return out.clamp_(0.0, 1.0).sub_(mean).div_(std).to(spec.dtype)


def _resize_crop(x, spec, th: int, tw: int):
    """N x H x W x C float (C = 3, or 1 / 4: gray repeated, alpha dropped) -> N x 3 x th x tw."""
    import torch.nn.functional as F

    if x.shape[-1] == 1:
        x = x.expand(*x.shape[:-1], 3)
    elif x.shape[-1] == 4:
        x = x[..., :3]
    x = x.permute(0, 3, 1, 2)   # channels-last view
    h, w = x.shape[-2:]
    rh, rw = resized_size(h, w, (th, tw), spec.resize_mode)
    if (rh, rw) != (h, w):
        mode = "bilinear" if spec.interpolation == "bilinear" else "bicubic"
        try:
            x = F.interpolate(x, size=(rh, rw), mode=mode, antialias=True, align_corners=False)
        except NotImplementedError:   # a backend without the antialiased kernel (e.g. some MPS builds)
            x = F.interpolate(x.cpu(), size=(rh, rw), mode=mode, antialias=True, align_corners=False).to(x.device)
    return _crop_or_pad(x, th, tw)


def _crop_or_pad(x, th: int, tw: int):
    """torchvision CenterCrop offsets; pads with 0 (open_clip's fill) when smaller ("longest")."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    if h < th or w < tw:
        ph, pw = max(th - h, 0), max(tw - w, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
        h, w = x.shape[-2:]
    top = round((h - th) / 2.0)
    left = round((w - tw) / 2.0)
    return x[..., top:top + th, left:left + tw]


def encode_images(bundle, images, batch_size: int = 32,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """L2-normalised image embeddings, float32 [N, D], ``batch_size`` images per forward pass,
    preprocessed on the model's device and encoded in the bundle's precision (``bundle.dtype``).
    ``images``: a list of arrays (``prepare_images``) or a torch batch N x H x W x C on any device
    (ComfyUI's IMAGE, ``prepare_tensor``)."""
    batch = prepare_tensor(images) if hasattr(images, "detach") else prepare_images(images)
    return _encode_batches(bundle, batch, len(batch), batch_size, progress)


def prepare_tensor(images):
    """Validate a torch image batch (ComfyUI's IMAGE: N x H x W x C float in [0, 1], or one
    H x W x C image; C = 1, 3 or 4; uint8 is divided by 255) without leaving its device: the
    batch is uploaded / sliced as it is, never split into numpy arrays."""
    import torch

    x = images.detach()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise ClipFilterError(f"expected N x H x W x 3 (or x1 gray, x4 RGBA), got shape {tuple(x.shape)}", "images")
    if x.shape[0] == 0:
        raise ClipFilterError("no images to score (empty batch)", "images")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ClipFilterError(f"images have no pixels (shape {tuple(x.shape)})", "images")
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if not x.is_floating_point():
        raise ClipFilterError(f"pixel type {x.dtype} not supported; use float in [0, 1] or uint8", "images")
    lo, hi = (float(v) for v in torch.aminmax(x.float()))   # NaN propagates; +-Inf shows as an extreme
    if not (np.isfinite(lo) and np.isfinite(hi)):
        bad = (~torch.isfinite(x)).flatten(1).sum(1)
        first = int(torch.nonzero(bad)[0, 0])
        raise ClipFilterError(f"{int(bad[first])} pixel values are NaN or Inf", f"image {first}")
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ClipFilterError(f"pixel values span [{lo:.3g}, {hi:.3g}]; expected [0, 1]", "images")
    return x if 0.0 <= lo and hi <= 1.0 else x.clamp(0.0, 1.0)


def _encode_batches(spec, images, n: int, batch_size: int, progress=None) -> np.ndarray:
    import torch

    if batch_size < 1:
        raise ClipFilterError(f"batch_size must be >= 1, got {batch_size}", "batch_size")
    chunks = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x = model_input(spec, images[start:start + batch_size])
            feats = spec.model.encode_image(x).float()   # embeddings leave the encoder as float32
            chunks.append(torch.nn.functional.normalize(feats, dim=-1).cpu().numpy())
            if progress is not None:
                progress(min(start + batch_size, n), n)
    return np.concatenate(chunks, axis=0)


def encode_image_batch(model, images_bhwc, precision: str = "auto", device=None, batch_size: int = 32, *,
                       image_size: tuple[int, int] = (224, 224), mean=None, std=None,
                       interpolation: str = "bicubic", resize_mode: str = "shortest") -> np.ndarray:
    """The filter's image path as a plain function (for benches and GPU checks without ComfyUI).

    ``model``: an open_clip CLIP (fp32 as built); it is moved to ``device`` and cast to the
    precision IN PLACE (``nn.Module.to``). ``images_bhwc``: a float tensor N x H x W x 3 in [0, 1]
    (ComfyUI's IMAGE; on any device) or a list of H x W x 3 arrays. ``precision``: auto | fp32 |
    fp16 | bf16 (``precision.resolve_precision``; ClipFilterError for one the device cannot run).
    ``device``: default cuda when available, else cpu. Preprocessing is open_clip's eval transform
    (default OpenAI mean/std, bicubic, shortest side + center crop), done on ``device``.
    Returns L2-normalised float32 embeddings [N, D] as numpy.
    """
    import types

    import torch

    from .precision import resolve_precision, torch_dtype

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch_dtype(resolve_precision(precision, device))
    model.to(device=device, dtype=dtype).eval()
    images_bhwc = prepare_tensor(images_bhwc) if isinstance(images_bhwc, torch.Tensor) else prepare_images(images_bhwc)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    spec = types.SimpleNamespace(
        model=model, image_size=size, device=str(device), dtype=dtype, interpolation=interpolation,
        resize_mode=resize_mode, mean=tuple(mean or OPENAI_MEAN), std=tuple(std or OPENAI_STD))
    return _encode_batches(spec, images_bhwc, len(images_bhwc), batch_size)


class TextMemo:
    """Text-encoder outputs kept across caches, keyed by the exact batch of texts that was encoded
    (least recently used dropped past ``size`` batches). A hit returns the very array the same
    model computed for the same batch, so results are bit-identical to encoding it again; a batch
    of other texts (or the same texts in another order / grouping) is encoded anew."""

    def __init__(self, size: int = 64):
        from collections import OrderedDict

        self.size = int(size)
        self._batches: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()

    def get(self, texts: tuple[str, ...]) -> np.ndarray | None:
        feats = self._batches.get(texts)
        if feats is not None:
            self._batches.move_to_end(texts)
        return feats

    def put(self, texts: tuple[str, ...], feats: np.ndarray) -> None:
        feats.setflags(write=False)   # shared by later caches: never written
        self._batches[texts] = feats
        self._batches.move_to_end(texts)
        while len(self._batches) > self.size:
            self._batches.popitem(last=False)


_MEMOS = None   # WeakKeyDictionary: model -> {(device, dtype): TextMemo}; created on first use


def shared_text_memo(bundle) -> TextMemo:
    """The process's ``TextMemo`` for ``bundle``'s model on its device in its precision: a node
    that scores one image per queue run encodes its class text once, not every run. Weakly keyed
    by the model, so an evicted model takes its memo along."""
    import weakref

    global _MEMOS
    if _MEMOS is None:
        _MEMOS = weakref.WeakKeyDictionary()
    per_model = _MEMOS.setdefault(bundle.model, {})
    return per_model.setdefault((str(bundle.device), str(bundle.dtype)), TextMemo())


class TextEmbeddingCache:
    """Encodes each distinct text once per cache; ``encoded_count`` counts texts sent to the model.
    ``memo`` (a ``TextMemo``, e.g. ``shared_text_memo(bundle)``): batches this cache would send to
    the model are first looked up there (same batches as without it, so the same vectors)."""

    def __init__(self, bundle, memo: TextMemo | None = None):
        self.bundle = bundle
        self.memo = memo
        self._vectors: dict[str, np.ndarray] = {}
        self.encoded_count = 0

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """L2-normalised text embeddings, float32 [len(texts), D] (CLIP truncates at 77 tokens)."""
        import torch

        if texts is None or len(texts) == 0:
            raise ClipFilterError("no texts to encode (empty list)", "texts")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ClipFilterError(f"text is missing or empty ({text!r})", f"text {i}")
        new = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        with torch.inference_mode():
            for start in range(0, len(new), batch_size):
                part = new[start:start + batch_size]
                feats = self.memo.get(tuple(part)) if self.memo is not None else None
                if feats is None:
                    tokens = self.bundle.tokenizer(part).to(self.bundle.device)
                    feats = encode_text_tokens(self.bundle.model, tokens).float()
                    feats = torch.nn.functional.normalize(feats, dim=-1).cpu().numpy()
                    self.encoded_count += len(part)
                    if self.memo is not None:
                        self.memo.put(tuple(part), feats)
                self._vectors.update(zip(part, feats))
        return np.stack([self._vectors[t] for t in texts])


def encode_text_tokens(model, tokens):
    """``model.encode_text(tokens)``, but running only the tokens up to the last end-of-text.

    CLIP's text tower is causal and pools the end-of-text position, so the padding after it
    (77 - ~15 tokens for a typical prompt) cannot change the result; skipping it makes text
    encoding several times cheaper. Models whose text tower is not a causal, EOT-pooled
    open_clip ``CLIP`` text tower take the plain ``encode_text`` path.
    """
    import torch

    if not _causal_eot_pooled(model):
        return model.encode_text(tokens)
    if model.text_pool_type == "argmax":
        ends = tokens.argmax(dim=-1)
    else:
        ends = (tokens == model.text_eos_id).int().argmax(dim=-1)
    length = int(ends.max()) + 1
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens[:, :length]).to(cast)
    x = x + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)[torch.arange(x.shape[0], device=x.device), ends]
    if model.text_projection is None:
        return x
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


def _causal_eot_pooled(model) -> bool:
    import torch
    from open_clip.model import CLIP

    if type(model) is not CLIP or model.text_pool_type not in ("argmax", "eos"):
        return False
    if model.text_pool_type == "eos" and model.text_eos_id is None:
        return False
    mask = getattr(model, "attn_mask", None)
    if mask is None or mask.ndim != 2:
        return False
    upper = torch.triu(torch.ones_like(mask, dtype=torch.bool), diagonal=1)
    return bool(torch.isneginf(mask[upper]).all() and (mask[~upper] == 0).all())


def similarities(img_emb: np.ndarray, txt_emb: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix [N images, M texts] of L2-normalised embeddings."""
    return np.asarray(img_emb, dtype=np.float32) @ np.asarray(txt_emb, dtype=np.float32).T


def paired_similarities(img_emb: np.ndarray, txt_emb: np.ndarray) -> np.ndarray:
    """Cosine similarity of row i of ``img_emb`` with row i of ``txt_emb`` -> [N]."""
    return np.einsum("nd,nd->n", np.asarray(img_emb, np.float32), np.asarray(txt_emb, np.float32))


def score_items(bundle, items: list[ScoredItem], text_side: str = "prompt", batch_size: int = 32,
                progress: Callable[[int, int], None] | None = None,
                class_texts: dict[str, str] | None = None,
                text_cache: TextEmbeddingCache | None = None) -> None:
    """Fill ``item.score`` and ``item.embedding`` (and ``extra["class_scores"]``) in place.

    ``text_side``: "prompt" scores against the generating prompt; "class_text" against the class
    text (``item.metadata["clip_text"]``, else ``class_texts[label]``); "both" stores the mean
    of those two cosine scores, and each one in ``extra["score_prompt"]`` / ``["score_class_text"]``.
    ``extra["clip_precision"]`` / ``["clip_device"]``: the precision and device the encoders ran in
    (the dataset writer stores ``extra`` in each manifest record).
    ``class_texts`` ({label: text}) also adds ``extra["class_scores"]`` = {label: cosine} for
    every class, which the class-margin check uses.
    """
    if text_side not in TEXT_SIDES:
        raise ClipFilterError(f"unknown text side {text_side!r}; use one of {TEXT_SIDES}", "text_side")
    if not items:
        raise ClipFilterError("no items to score (empty list)", "items")
    _check_labels(items)
    cache = text_cache if text_cache is not None else TextEmbeddingCache(bundle)
    per_side = {}
    if text_side in ("prompt", "both"):
        per_side["prompt"] = [_item_text(it, i, "prompt", class_texts) for i, it in enumerate(items)]
    if text_side in ("class_text", "both"):
        per_side["class_text"] = [_item_text(it, i, "class_text", class_texts)
                                  for i, it in enumerate(items)]
    if class_texts:
        labels = list(class_texts)
        class_emb = cache.encode([class_texts[k] for k in labels])

    img_emb = encode_images(bundle, [it.image for it in items], batch_size, progress)
    precision, device = precision_of(bundle.dtype), str(bundle.device)   # what ran, for each record
    side_scores = {side: paired_similarities(img_emb, cache.encode(texts))
                   for side, texts in per_side.items()}
    final = np.mean(np.stack(list(side_scores.values())), axis=0)
    class_matrix = similarities(img_emb, class_emb) if class_texts else None
    for i, item in enumerate(items):
        item.embedding = img_emb[i]
        item.score = float(final[i])
        item.extra["text_side"] = text_side
        item.extra["clip_precision"] = precision
        item.extra["clip_device"] = device
        if text_side == "both":
            item.extra["score_prompt"] = float(side_scores["prompt"][i])
            item.extra["score_class_text"] = float(side_scores["class_text"][i])
        if class_matrix is not None:
            item.extra["class_scores"] = {k: float(v) for k, v in zip(labels, class_matrix[i])}


def _where(item: ScoredItem, pos: int) -> str:
    return f"item {pos}" + (f" (sampler index {item.index})" if item.index is not None else "")


def _check_labels(items: list[ScoredItem]) -> None:
    for pos, item in enumerate(items):
        if not isinstance(item.label, str) or not item.label.strip():
            raise ClipFilterError(f"label is missing or empty ({item.label!r})", _where(item, pos))


def _item_text(item: ScoredItem, pos: int, side: str, class_texts) -> str:
    if side == "prompt":
        text = item.prompt
        if not isinstance(text, str) or not text.strip():
            raise ClipFilterError("prompt is missing or empty, cannot score against it",
                                  _where(item, pos))
        return text
    text = (item.metadata or {}).get("clip_text") or (class_texts or {}).get(item.label)
    if not isinstance(text, str) or not text.strip():
        raise ClipFilterError(f"no class text for label {item.label!r}: metadata has no "
                              f"'clip_text' and class_texts has no entry", _where(item, pos))
    return text
