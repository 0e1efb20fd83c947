"""How much memory a node's outputs take, and the one budget they must fit.

ComfyUI keeps every output of a prompt in memory until the prompt ends (and in its cache after),
as float32 tensors. A node whose schema allows a large size and a large count (4096 items of
4096² pixels: about 800 GB) checks its estimate before making anything, with a message that says
the estimate and how to stay inside.
"""
from __future__ import annotations

MAX_OUTPUT_BYTES = 8 * 1024 ** 3   # one node's outputs in one prompt: a third of a 24 GB machine
FLOAT32 = 4


def planes_bytes(items: int, size: int, planes: int) -> int:
    """float32 bytes of ``items`` outputs of ``planes`` size x size planes each (an RGB image is 3
    planes, a mask 1)."""
    return int(items) * int(size) * int(size) * int(planes) * FLOAT32


class MemoryBudgetError(ValueError):
    """A node's outputs would not fit MAX_OUTPUT_BYTES; the message gives the estimate."""


def check_output_memory(what: str, items: int, size: int, planes: int, fix: str) -> None:
    """MemoryBudgetError unless ``items`` outputs of ``planes`` float32 planes of size² fit the budget."""
    need = planes_bytes(items, size, planes)
    if need > MAX_OUTPUT_BYTES:
        raise MemoryBudgetError(
            f"{what}: {items} item(s) of {size}x{size} need about {need / 1024 ** 3:.1f} GB of memory for their "
            f"outputs ({planes} float32 planes each); the limit is {MAX_OUTPUT_BYTES / 1024 ** 3:.0f} GB "
            f"(MAX_OUTPUT_BYTES); {fix}")
