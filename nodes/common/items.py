"""Build ``ScoredItem``s from the per-item lists a queue run produces (plain Python).

In one queue run the prompt sampler emits N items as lists and every downstream node runs once
per item, so a node with ``is_input_list=True`` receives N images and N prompts/labels/metadata
in the same order. An image may itself be a batch of B frames: its item's texts repeat B times.
"""
from __future__ import annotations

import json

from .identity import frame_id
from .naming import public_error
from .records import ScoredItem


@public_error
class ItemListError(ValueError):
    """The per-item lists do not fit together; ``field`` names the input."""

    def __init__(self, message: str, field: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def _pick(values: list, i: int, default=None):
    if not values:
        return default
    return values[i] if len(values) > 1 else values[0]


def _frames(image) -> list:
    arr = image.detach().float().cpu().numpy() if hasattr(image, "detach") else image
    return list(arr) if getattr(arr, "ndim", 0) == 4 else [arr]


def items_from_lists(images: list, positive: list, label: list, metadata: list | None = None,
                     negative: list | None = None, seed: list | None = None) -> list[ScoredItem]:
    """One ``ScoredItem`` per frame. Each text list holds one value per image, or a single value
    shared by all images."""
    metadata, negative, seed = metadata or [], negative or [], seed or []
    if not images:
        raise ItemListError("no images (empty list)", "images")
    for name, values in (("positive", positive), ("label", label), ("metadata", metadata),
                         ("negative", negative), ("seed", seed)):
        if values and len(values) not in (1, len(images)):
            raise ItemListError(f"{len(values)} values for {len(images)} images; wire it from the same "
                                "DTGen Prompt Sampler as the images", name)
    items = []
    for i, image in enumerate(images):
        raw = _pick(metadata, i, "") or ""
        try:
            meta = json.loads(raw) if isinstance(raw, str) and raw.strip() else dict(raw or {})
        except (ValueError, TypeError) as exc:
            raise ItemListError(f"item {i} is not a JSON object: {exc}", "metadata") from None
        if not isinstance(meta, dict):
            raise ItemListError(f"item {i} is not a JSON object: {raw!r:.80}", "metadata")
        text = _pick(label, i, "")
        if not isinstance(text, str) or not text.strip():
            raise ItemListError(f"item {i} has no label ({text!r}); every image needs its class label", "label")
        frames = _frames(image)
        for b, frame in enumerate(frames):
            index = meta.get("index")
            items.append(ScoredItem(
                image=frame, label=text, prompt=_pick(positive, i, "") or "",
                negative=_pick(negative, i, "") or "", seed=_pick(seed, i), index=index,
                metadata=dict(meta, item_id=frame_id(meta, index, b)) if len(frames) > 1 else meta,
                extra={"batch_index": b} if len(frames) > 1 else {}))
    return items

