"""What a parsed prompt pack is: the immutable ``Pack``, ``PackClass`` and ``Entry``, the error
every pack problem raises, and the ``{slot}`` template syntax.

The other pack modules build on this one: ``yaml_budget.py`` reads the YAML within fixed limits,
``pack_checks.py`` and ``slot_checks.py`` validate it into a ``Pack``, and ``pack.py`` is the entry
point (``parse_pack``, ``load_pack``) that the rest of DTGen imports.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Optional

from ..common.errors import clip, shown
from ..common.naming import public_error

FORMAT_VERSION = 1
PACK_SUFFIXES = (".yaml", ".yml")
SLOT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@public_error
class PromptPackError(ValueError):
    """A prompt pack or sampler request is invalid; carries where the problem is."""

    def __init__(self, message: str, *, file: Optional[str] = None, path: Optional[str] = None,
                 line: Optional[int] = None):
        # a value echoed back (an unknown key, a label) is capped: a 100 KB key is not repeated
        message, path = clip(message, 400), clip(path, 150) if path else path
        self.message, self.file, self.path, self.line = message, file, path, line
        where = ":".join(str(p) for p in (file, line) if p is not None)
        prefix = ": ".join(p for p in (where, path) if p)
        super().__init__(f"{prefix}: {message}" if prefix else message)


def format_path(path: tuple) -> str:
    """``("classes", 3, "templates", 0)`` -> ``classes[3].templates[0]``: a YAML path in errors."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass(frozen=True)
class Entry:
    """One template or vocabulary entry; ``text`` may reference slots as ``{name}``."""

    text: str
    weight: float = 1.0


@dataclass(frozen=True, eq=False)
class PackClass:
    """One class (one dataset folder). ``negative`` and ``clip_text`` are already resolved."""

    index: int
    label: str
    templates: tuple
    negative: str
    clip_text: str
    weight: float = 1.0
    order: Optional[int] = None
    metadata: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    slots: Mapping[str, tuple] = field(default_factory=lambda: MappingProxyType({}))  # overrides


@dataclass(frozen=True, eq=False)
class Pack:
    """A validated, immutable prompt pack. ``pack_hash`` identifies its normalised content."""

    name: str
    trigger: str
    suffix: str
    negative: str
    slots: Mapping[str, tuple]
    classes: tuple
    pack_hash: str
    source: str = "<inline>"
    description: str = ""
    version: int = FORMAT_VERSION

    @property
    def labels(self) -> tuple:
        return tuple(c.label for c in self.classes)

    def slot_table(self, cls: PackClass) -> dict:
        """The vocabularies a class sees: its own overrides first, then the pack's slots."""
        return {**self.slots, **cls.slots}


def split_template(text: str) -> tuple:
    """``"a {x} b"`` -> ``(("a ", " b"), ("x",))``: literals around the slot references.

    Raises ``ValueError`` (message only) on stray braces or bad slot names.
    """
    literals, refs, pos = [], [], 0
    while True:
        open_at = text.find("{", pos)
        close_at = text.find("}", pos)
        if open_at < 0:
            if close_at >= 0:
                raise ValueError(f"'}}' without '{{' at character {close_at + 1} of {shown(text)}")
            literals.append(text[pos:])
            return tuple(literals), tuple(refs)
        if 0 <= close_at < open_at:
            raise ValueError(f"'}}' without '{{' at character {close_at + 1} of {shown(text)}")
        end = text.find("}", open_at)
        if end < 0:
            raise ValueError(f"unclosed '{{' at character {open_at + 1} of {shown(text)}")
        name = text[open_at + 1:end]
        if not SLOT_NAME.match(name):
            raise ValueError(f"{{{name}}} is not a slot reference (slot names use letters, digits "
                             f"and '_', starting with a letter or '_') in {shown(text)}")
        literals.append(text[pos:open_at])
        refs.append(name)
        pos = end + 1
