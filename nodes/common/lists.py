"""Helpers for nodes that take whole lists (``is_input_list=True``): widgets arrive as lists too."""
from __future__ import annotations

from typing import Any


def first(value: Any, default: Any = None) -> Any:
    """The widget value of an input-list node: the first element, or ``default`` when absent."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else default
    return default if value is None else value


def as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
