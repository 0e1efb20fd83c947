"""Records passed between the filter and the dataset writer (plain Python, no ComfyUI).

A ``ScoredItem`` is one generated image with everything the dataset writer needs to store it and
everything an auditor needs to reproduce it. A graph without a filter builds them with
``accepted=True, reason="unfiltered"``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

# A record's ``source`` when its item names none: made by a diffusion model (others: ``real``,
# ``copy_paste``). Records written before sources existed are all of this source.
GENERATED = "generated"


@dataclass
class ScoredItem:
    image: np.ndarray                      # H x W x 3, float32 in [0, 1]
    label: str
    prompt: str
    negative: str = ""
    seed: Optional[int] = None
    index: Optional[int] = None            # item index from the prompt sampler
    metadata: dict = field(default_factory=dict)   # the sampler's metadata (pack, pack_hash, ...)
    score: Optional[float] = None          # cosine similarity image <-> text
    threshold: Optional[float] = None      # this item's class threshold when decided
    method: Optional[str] = None           # threshold method name, e.g. "mean_std"
    accepted: bool = True
    reason: str = "unfiltered"             # ok | below_threshold | class_margin | near_duplicate | unfiltered
    provisional: bool = False              # decided on fewer than the minimum count of scores
    embedding: Optional[np.ndarray] = None # L2-normalised image embedding, float32
    extra: dict = field(default_factory=dict)      # further per-item facts (margins, text used)
    instance_map: Optional[np.ndarray] = None      # H x W uint16: 0 background, k = instance k (common.instances)
    instance_labels: tuple = ()                    # label of instance k at position k - 1


@dataclass
class ScoredBatch:
    """What DTGenClipFilter hands to DTGenDatasetWriter (custom type ``DTGEN_SCORED_BATCH``)."""

    items: list[ScoredItem]
    thresholds: dict[str, float] = field(default_factory=dict)   # per label
    config: dict[str, Any] = field(default_factory=dict)         # method, k, text side, model names

    def __len__(self) -> int:
        return len(self.items)
