"""Constructed pack YAML -> a validated, immutable ``Pack``: the fields of the pack, its classes
and their entries, checked one by one; each problem raises ``PromptPackError`` naming the file,
the YAML path (``classes[3].templates[0]``) and the line. The slot graph is ``slot_checks.py``.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
from types import MappingProxyType
from typing import Any, Mapping, Optional

from ..common.errors import shown
from ..common.labels import default_class_text, label_problem
from .pack_model import (
    FORMAT_VERSION, SLOT_NAME, Entry, Pack, PackClass, PromptPackError, format_path, split_template,
)
from .slot_checks import check_references

_PACK_KEYS = {"version", "name", "description", "trigger", "suffix", "negative", "slots", "classes"}
_CLASS_KEYS = {"label", "templates", "metadata", "order", "negative", "negative_extra", "weight",
               "clip_text", "slots"}
_ENTRY_KEYS = {"text", "weight"}


def validate_pack(data: Any, source: str, root_node) -> Pack:
    """The ``Pack`` that constructed YAML ``data`` describes; ``root_node`` (the composed node
    tree, ``None`` for an empty document) gives the line numbers of errors."""
    return _Validator(source, root_node).pack(data)


class _Validator:
    """Turns constructed YAML data into a ``Pack``; uses the composed node tree for line numbers."""

    def __init__(self, source: str, root_node):
        self.source = source
        self.root_node = root_node

    # -- errors with location ------------------------------------------------------------------
    def error(self, path: tuple, message: str) -> PromptPackError:
        return PromptPackError(message, file=self.source, path=format_path(path) or None,
                               line=self._line(path))

    def _line(self, path: tuple) -> Optional[int]:
        node = self.root_node
        if node is None:
            return None
        for part in path:
            child = None
            if isinstance(part, int) and node.id == "sequence" and part < len(node.value):
                child = node.value[part]
            elif isinstance(part, str) and node.id == "mapping":
                for key, value in node.value:
                    if key.id == "scalar" and key.value == part:
                        child = value
            if child is None:
                break
            node = child
        return node.start_mark.line + 1

    # -- typed field readers -------------------------------------------------------------------
    def text(self, value: Any, path: tuple, *, required: bool = False) -> str:
        if value is None and not required:
            return ""
        if not isinstance(value, str):
            raise self.error(path, f"must be text, got {_describe(value)}")
        if required and not value.strip():
            raise self.error(path, "must not be empty")
        return value

    def number(self, value: Any, path: tuple, *, positive: bool) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(path, f"must be a number, got {_describe(value)}")
        if not math.isfinite(value):
            raise self.error(path, f"must be a finite number, got {value}")
        if value < 0 or (positive and value == 0):
            raise self.error(path, f"must be {'> 0' if positive else '>= 0'}, got {value}")
        return float(value)

    def mapping(self, value: Any, path: tuple, allowed: set) -> dict:
        if not isinstance(value, dict):
            raise self.error(path, f"must be a mapping, got {_describe(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.error(path, f"key {shown(key)} must be text")
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                raise self.error(path + (key,), f"unknown key {shown(key)}"
                                 + (f" (did you mean {hint[0]!r}?)" if hint else "")
                                 + f"; allowed: {', '.join(sorted(allowed))}")
        return value

    def entries(self, value: Any, path: tuple, what: str) -> tuple:
        """A non-empty list of plain strings or ``{text, weight}`` mappings."""
        if value is None:
            raise self.error(path, f"missing {what}")
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.error(path, f"{what} must be a list, got {_describe(value)}")
        if not value:
            raise self.error(path, f"{what} is empty")
        out = []
        for index, item in enumerate(value):
            item_path = path + (index,)
            if isinstance(item, dict):
                self.mapping(item, item_path, _ENTRY_KEYS)
                if "text" not in item:
                    raise self.error(item_path, "entry mapping needs 'text'")
                text = self.text(item["text"], item_path + ("text",), required=False)
                weight = self.number(item.get("weight", 1), item_path + ("weight",), positive=False)
            else:
                text, weight = self.text(item, item_path, required=False), 1.0
            try:
                split_template(text)
            except ValueError as exc:
                raise self.error(item_path, str(exc)) from None
            out.append(Entry(text, weight))
        if not any(e.weight > 0 for e in out):
            raise self.error(path, f"every entry of {what} has weight 0; nothing can be chosen")
        return tuple(out)

    def slots(self, value: Any, path: tuple) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(path, f"must be a mapping of slot name to entries, got {_describe(value)}")
        out = {}
        for name, entries in value.items():
            if not isinstance(name, str) or not SLOT_NAME.match(name):
                raise self.error(path + (str(name),), f"slot name {shown(name)} must use letters, digits "
                                 "and '_', starting with a letter or '_'")
            out[name] = self.entries(entries, path + (name,), f"vocabulary {name!r}")
        return out

    # -- the pack --------------------------------------------------------------------------------
    def pack(self, data: Any) -> Pack:
        if data is None:
            raise self.error((), "the pack is empty")
        self.mapping(data, (), _PACK_KEYS)
        if "version" not in data:
            raise self.error((), f"missing 'version' (this DTGen reads version: {FORMAT_VERSION})")
        version = data["version"]
        if isinstance(version, bool) or version != FORMAT_VERSION:
            raise self.error(("version",), f"unsupported format version {shown(version)}; "
                             f"this DTGen reads version: {FORMAT_VERSION}")
        if "name" not in data:
            raise self.error((), "missing 'name'")
        name = self.text(data["name"], ("name",), required=True).strip()
        trigger = self.text(data.get("trigger"), ("trigger",)).strip()
        suffix = self.text(data.get("suffix"), ("suffix",)).strip()
        negative = self.text(data.get("negative"), ("negative",)).strip()
        description = self.text(data.get("description"), ("description",)).strip()
        slots = self.slots(data.get("slots"), ("slots",))

        raw_classes = data.get("classes")
        if not isinstance(raw_classes, list) or not raw_classes:
            raise self.error(("classes",) if "classes" in data else (),
                             "missing 'classes'" if raw_classes is None else
                             "'classes' must be a non-empty list")
        classes, seen, folded = [], {}, {}
        for index, raw in enumerate(raw_classes):
            cls = self.pack_class(raw, ("classes", index), index, negative)
            if cls.label in seen:
                raise self.error(("classes", index, "label"), f"duplicate label {cls.label!r} "
                                 f"(also classes[{seen[cls.label]}])")
            key = cls.label.casefold()
            if key in folded:
                other = raw_classes[folded[key]]["label"]
                raise self.error(("classes", index, "label"), f"label {cls.label!r} collides with "
                                 f"{other!r} (classes[{folded[key]}]) on case-insensitive file systems")
            seen[cls.label], folded[key] = index, index
            classes.append(cls)

        check_references(self.error, slots, classes, len(trigger) + len(suffix) + 4)
        normalised = {
            "version": FORMAT_VERSION, "name": name, "trigger": trigger, "suffix": suffix,
            "negative": negative, "slots": _normal_slots(slots),
            "classes": [
                {"label": c.label, "templates": _normal_entries(c.templates), "negative": c.negative,
                 "clip_text": c.clip_text, "weight": c.weight, "order": c.order,
                 "metadata": dict(c.metadata), "slots": _normal_slots(c.slots)}
                for c in classes
            ],
        }
        blob = json.dumps(normalised, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return Pack(
            name=name, trigger=trigger, suffix=suffix, negative=negative,
            slots=MappingProxyType(slots), classes=tuple(classes),
            pack_hash=hashlib.blake2b(blob.encode("utf-8"), digest_size=16).hexdigest(),
            source=self.source, description=description,
        )

    def pack_class(self, raw: Any, path: tuple, index: int, pack_negative: str) -> PackClass:
        self.mapping(raw, path, _CLASS_KEYS)
        if "label" not in raw:
            raise self.error(path, "class needs a 'label'")
        label = raw["label"]
        if not isinstance(label, str):
            raise self.error(path + ("label",), f"label must be text, got {_describe(label)}")
        problem = label_problem(label)
        if problem:
            raise self.error(path + ("label",), problem)
        if "templates" not in raw:
            raise self.error(path, f"class {label!r} has no 'templates'")
        templates = self.entries(raw["templates"], path + ("templates",), "templates")

        metadata = raw.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise self.error(path + ("metadata",), f"must be a mapping of numbers, got {_describe(metadata)}")
        for key, value in metadata.items():
            if not isinstance(key, str):
                raise self.error(path + ("metadata",), f"key {shown(key)} must be text")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise self.error(path + ("metadata", key), f"must be a finite number, got {_describe(value)}")

        order = raw.get("order")
        if order is not None and (isinstance(order, bool) or not isinstance(order, int)):
            raise self.error(path + ("order",), f"must be an integer, got {_describe(order)}")
        weight = self.number(raw.get("weight", 1), path + ("weight",), positive=True)

        negative = pack_negative
        if raw.get("negative") is not None:
            negative = self.text(raw["negative"], path + ("negative",)).strip()
        extra = self.text(raw.get("negative_extra"), path + ("negative_extra",)).strip()
        if extra:
            negative = f"{negative}, {extra}" if negative else extra
        clip_text = self.text(raw.get("clip_text"), path + ("clip_text",)).strip()
        if not clip_text:
            clip_text = default_class_text(label)
        return PackClass(
            index=index, label=label, templates=templates, negative=negative, clip_text=clip_text,
            weight=weight, order=order, metadata=MappingProxyType(dict(metadata)),
            slots=MappingProxyType(self.slots(raw.get("slots"), path + ("slots",))),
        )


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {shown(value)}" if value is not None else "nothing"


def _normal_entries(entries: tuple) -> list:
    return [[e.text, e.weight] for e in entries]


def _normal_slots(slots: Mapping) -> dict:
    return {name: _normal_entries(entries) for name, entries in slots.items()}

