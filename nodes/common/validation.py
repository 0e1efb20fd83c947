"""Helpers for ``validate_inputs`` (ComfyUI only uses them, but they are plain Python).

ComfyUI skips its own min/max and option checks for every input that ``validate_inputs`` names
(and for all inputs if it takes ``**kwargs``), so a node names only what it checks and checks
those ranges itself. A linked input arrives as ``None`` at validation time: its value is not
known yet, so the checks that need it wait for execution.
"""
from __future__ import annotations


def linked(*values) -> bool:
    """Whether any of these inputs is linked (value unknown at queue time)."""
    return any(v is None for v in values)


def check_int(name: str, value, lo: int, hi: int | None = None) -> None:
    """ValueError naming ``name`` unless ``value`` is an int in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f"{lo} .. {hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}={value!r} must be an integer {bound}")


def check_choice(name: str, value, options) -> None:
    """ValueError naming ``name`` unless ``value`` is one of ``options`` (ComfyUI 0.3.64 does not
    check the values of V3 combo inputs itself)."""
    if value not in options:
        raise ValueError(f"{name} {value!r}: choose one of {', '.join(options)}")
