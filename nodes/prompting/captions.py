"""The caption a real image gets when it has no ``.txt`` of its own: the pack's trigger token and
its class's CLIP text, so a LoRA trained on the real images learns the trigger the generation
prompts use (``dtgtableware, a photo of a plate with food stains``)."""
from __future__ import annotations

from typing import Callable

from .pack import PromptPackError


def training_caption(pack, label: str) -> str:
    """``"<trigger>, <clip_text>"`` of ``label`` in ``pack`` (the trigger is left out when the pack
    has none). An unknown label raises ``PromptPackError`` listing the pack's classes."""
    for cls in pack.classes:
        if cls.label == label:
            return ", ".join(part for part in (pack.trigger.strip(), cls.clip_text.strip()) if part)
    raise PromptPackError(f"label {label!r} is not a class of prompt pack {pack.name!r} "
                          f"(classes: {', '.join(pack.labels)}); rename the folder, add the class to the "
                          "pack, or choose no pack to caption it 'a photo of <label>'")


def caption_function(pack) -> Callable[[str], str]:
    """``label -> caption`` for a pack, or the plain ``a photo of <label>`` without one."""
    if pack is None:
        from ..common.labels import default_class_text

        return default_class_text
    return lambda label: training_caption(pack, label)
