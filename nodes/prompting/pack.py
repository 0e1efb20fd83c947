"""Prompt packs: the YAML format (``version: 1``), its validation and loading.

A pack is parsed once into an immutable ``Pack``; every problem raises ``PromptPackError`` naming
the file, the YAML path (``classes[3].templates[0]``) and the line. The format is documented in
docs/prompt-packs.md. yaml is imported lazily so that listing packs (catalog.py) stays cheap.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import threading
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional

from ..common.labels import default_class_text, label_problem
from ..common.naming import public_error

FORMAT_VERSION = 1
PACK_SUFFIXES = (".yaml", ".yml")

# Budgets, checked before anything expensive (a pack is user input, parsed while ComfyUI's server
# validates a queued prompt): the YAML itself, then what its aliases and slots expand to.
MAX_PACK_BYTES = 256 * 1024      # YAML text (UTF-8)
MAX_YAML_DEPTH = 64              # nested mappings / sequences
MAX_YAML_ALIASES = 1000          # `*anchor` uses, each counted once
MAX_YAML_NODES = 200_000         # nodes after expanding every alias (billion laughs stops here)
MAX_YAML_CHARS = 4 * 1024 * 1024  # scalar characters after expanding every alias
MAX_SLOT_DEPTH = 32              # slots referencing slots referencing slots ...
MAX_PROMPT_CHARS = 20_000        # longest prompt any item of a class can expand to
MAX_EXPANSION_STEPS = 2_000      # slot references one item can expand

_SLOT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PACK_KEYS = {"version", "name", "description", "trigger", "suffix", "negative", "slots", "classes"}
_CLASS_KEYS = {"label", "templates", "metadata", "order", "negative", "negative_extra", "weight",
               "clip_text", "slots"}
_ENTRY_KEYS = {"text", "weight"}


@public_error
class PromptPackError(ValueError):
    """A prompt pack or sampler request is invalid; carries where the problem is."""

    def __init__(self, message: str, *, file: Optional[str] = None, path: Optional[str] = None,
                 line: Optional[int] = None):
        self.message, self.file, self.path, self.line = message, file, path, line
        where = ":".join(str(p) for p in (file, line) if p is not None)
        prefix = ": ".join(p for p in (where, path) if p)
        super().__init__(f"{prefix}: {message}" if prefix else message)


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

    def get_class(self, label: str) -> PackClass:
        for c in self.classes:
            if c.label == label:
                return c
        raise PromptPackError(f"unknown class {label!r}; this pack has {', '.join(self.labels)}",
                              file=self.source)

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
                raise ValueError(f"'}}' without '{{' at character {close_at + 1} of {text!r}")
            literals.append(text[pos:])
            return tuple(literals), tuple(refs)
        if 0 <= close_at < open_at:
            raise ValueError(f"'}}' without '{{' at character {close_at + 1} of {text!r}")
        end = text.find("}", open_at)
        if end < 0:
            raise ValueError(f"unclosed '{{' at character {open_at + 1} of {text!r}")
        name = text[open_at + 1:end]
        if not _SLOT_NAME.match(name):
            raise ValueError(f"{{{name}}} is not a slot reference (slot names use letters, digits "
                             f"and '_', starting with a letter or '_') in {text!r}")
        literals.append(text[pos:open_at])
        refs.append(name)
        pos = end + 1


# --------------------------------------------------------------------------------------------
# Parsing and validation


def parse_pack(text: str, source: str = "<inline>") -> Pack:
    """Parse and validate pack YAML text; ``source`` names it in errors and ``Pack.source``.

    Every budget above is checked before the work it bounds; a refusal names the limit, the value
    and the YAML path."""
    import yaml

    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_PACK_BYTES:
        raise PromptPackError(f"the pack is {size} bytes of YAML; the limit is {MAX_PACK_BYTES} bytes "
                              "(MAX_PACK_BYTES)", file=source)
    try:
        loader = _budgeted_loader(yaml)(text, source)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_expanded_size(node, source)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        message = f"malformed YAML: {problem}" + (f" ({context})" if context else "")
        raise PromptPackError(message, file=source, line=mark.line + 1 if mark else None) from None
    return _Validator(source, node).pack(data)


_LOADERS: dict = {}


def _budgeted_loader(yaml):
    """A SafeLoader whose composer counts nesting depth and alias uses as it goes (PyYAML composes
    recursively: without a depth bound a deeply nested document ends in RecursionError)."""
    if "loader" in _LOADERS:
        return _LOADERS["loader"]

    class BudgetedLoader(yaml.SafeLoader):
        def __init__(self, text, source):
            super().__init__(text)
            self.source, self.path, self.aliases = source, [], 0

        def compose_node(self, parent, index):
            mark = self.peek_event().start_mark
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    raise self.refuse(f"more than {MAX_YAML_ALIASES} aliases (*anchor uses); the limit is "
                                      f"{MAX_YAML_ALIASES} (MAX_YAML_ALIASES)", mark)
                return super().compose_node(parent, index)
            if isinstance(index, int):
                self.path.append(index)
            elif index is not None:
                self.path.append(getattr(index, "value", "?"))
            if len(self.path) > MAX_YAML_DEPTH:
                raise self.refuse(f"YAML nested more than {MAX_YAML_DEPTH} levels deep; the limit is "
                                  f"{MAX_YAML_DEPTH} (MAX_YAML_DEPTH)", mark)
            try:
                return super().compose_node(parent, index)
            finally:
                if index is not None:
                    self.path.pop()

        def refuse(self, message, mark):
            shown = _format_path(tuple(self.path[:8])) + (" ..." if len(self.path) > 8 else "")
            return PromptPackError(message, file=self.source, path=shown or None, line=mark.line + 1)

    _LOADERS["loader"] = BudgetedLoader
    return BudgetedLoader


def _check_expanded_size(root, source: str) -> None:
    """Refuse a document whose aliases expand past MAX_YAML_NODES nodes or MAX_YAML_CHARS scalar
    characters. Each node's expanded size is computed once (memo by identity), so this is linear in
    the composed document, not in its expansion."""
    memo: dict = {}

    def size(node) -> tuple:
        found = memo.get(id(node))
        if found is not None:
            return found
        if node.id == "scalar":
            found = (1, len(node.value))
        else:
            children = node.value if node.id == "sequence" else [n for pair in node.value for n in pair]
            nodes, chars = 1, 0
            for child in children:   # depth is bounded by MAX_YAML_DEPTH: recursion is safe
                n, c = size(child)
                nodes, chars = nodes + n, chars + c
            found = (nodes, chars)
        memo[id(node)] = found
        return found

    nodes, chars = size(root)
    if nodes <= MAX_YAML_NODES and chars <= MAX_YAML_CHARS:
        return
    where, biggest = None, -1
    if root.id == "mapping":    # name the top-level key that expands the most
        for key, value in root.value:
            n = size(value)[0] + size(value)[1]
            if n > biggest:
                where, biggest = key.value if key.id == "scalar" else None, n
    what = (f"{nodes} YAML nodes (limit {MAX_YAML_NODES}, MAX_YAML_NODES)" if nodes > MAX_YAML_NODES else
            f"{chars} characters of text (limit {MAX_YAML_CHARS}, MAX_YAML_CHARS)")
    raise PromptPackError(f"aliases expand this pack to {what}; an alias (*name) repeats its anchor's "
                          "whole content every time it is used", file=source, path=where)


def _format_path(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Validator:
    """Turns constructed YAML data into a ``Pack``; uses the composed node tree for line numbers."""

    def __init__(self, source: str, root_node):
        self.source = source
        self.root_node = root_node

    # -- errors with location ------------------------------------------------------------------
    def error(self, path: tuple, message: str) -> PromptPackError:
        return PromptPackError(message, file=self.source, path=_format_path(path) or None,
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

    def _check_duplicate_keys(self, root) -> None:
        # PyYAML silently keeps the last of two equal keys; a pack must not lose the first.
        # Each node is checked once, however many aliases point at it (billion laughs).
        seen_nodes: set = set()
        stack = [(root, ())]
        while stack:
            node, path = stack.pop()
            if id(node) in seen_nodes:
                continue
            seen_nodes.add(id(node))
            if node.id == "mapping":
                seen, children = set(), []
                for key, value in node.value:
                    name = key.value if key.id == "scalar" else None
                    if name in seen:
                        raise PromptPackError(f"key {name!r} appears twice", file=self.source,
                                              path=_format_path(path) or None, line=key.start_mark.line + 1)
                    seen.add(name)
                    children.append((value, path + ((name,) if name is not None else ())))
                stack.extend(reversed(children))     # depth first, in document order
            elif node.id == "sequence":
                stack.extend(reversed([(value, path + (index,)) for index, value in enumerate(node.value)]))

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
                raise self.error(path, f"key {key!r} must be text")
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                raise self.error(path + (key,), f"unknown key {key!r}"
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
            if not isinstance(name, str) or not _SLOT_NAME.match(name):
                raise self.error(path + (str(name),), f"slot name {name!r} must use letters, digits "
                                 "and '_', starting with a letter or '_'")
            out[name] = self.entries(entries, path + (name,), f"vocabulary {name!r}")
        return out

    # -- the pack --------------------------------------------------------------------------------
    def pack(self, data: Any) -> Pack:
        if self.root_node is not None:
            self._check_duplicate_keys(self.root_node)
        if data is None:
            raise self.error((), "the pack is empty")
        self.mapping(data, (), _PACK_KEYS)
        if "version" not in data:
            raise self.error((), f"missing 'version' (this DTGen reads version: {FORMAT_VERSION})")
        version = data["version"]
        if isinstance(version, bool) or version != FORMAT_VERSION:
            raise self.error(("version",), f"unsupported format version {version!r}; "
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

        self.check_references(slots, classes, len(trigger) + len(suffix) + 4)
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
                raise self.error(path + ("metadata",), f"key {key!r} must be text")
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

    def check_references(self, pack_slots: dict, classes: list, fixed_chars: int = 0) -> None:
        """Every ``{name}`` a class can reach must resolve, without cycles, within the expansion
        budgets (``fixed_chars``: trigger and suffix, added to every prompt)."""
        known_anywhere = set(pack_slots).union(*(c.slots for c in classes))
        for name, entries in pack_slots.items():
            for index, entry in enumerate(entries):
                for ref in split_template(entry.text)[1]:
                    if ref not in known_anywhere:
                        raise self.error(("slots", name, index),
                                         _unknown(ref, known_anywhere))
        for cls in classes:
            _ClassReferences(self, pack_slots, cls).check(fixed_chars)


class _ClassReferences:
    """Depth-first walk of one class's slot graph: unknown references, cycles, nesting depth, and
    the largest prompt (characters, slot expansions) any item of the class can expand to."""

    def __init__(self, validator: _Validator, pack_slots: dict, cls: PackClass):
        self.validator, self.cls = validator, cls
        self.table = {**pack_slots, **cls.slots}     # class overrides win
        self.where = {name: ("slots", name) for name in pack_slots}
        self.where.update({name: ("classes", cls.index, "slots", name) for name in cls.slots})
        self.state: dict = {}                        # slot name -> "visiting" | "done"
        self.bounds: dict = {}                       # slot name -> (max characters, max expansions)
        self.depth: dict = {}                        # slot name -> longest chain of slots from it

    def check(self, fixed_chars: int = 0) -> None:
        cls = self.cls
        for index, template in enumerate(cls.templates):
            for ref in split_template(template.text)[1]:
                if ref not in self.table:
                    raise self.validator.error(("classes", cls.index, "templates", index),
                                               _unknown(ref, self.table, cls.label))
                self.visit(ref, [], strict=True)
        for name in self.table:   # unused slots too: a cycle there is a mistake all the same
            self.visit(name, [], strict=False)
        for index, template in enumerate(cls.templates):
            if template.weight <= 0:
                continue
            chars, steps = self.entry_bound(template)
            chars += fixed_chars
            where = ("classes", cls.index, "templates", index)
            if chars > MAX_PROMPT_CHARS:
                raise self.validator.error(where, f"this template can expand to {_big(chars)} characters; "
                                           f"the limit is {MAX_PROMPT_CHARS} (MAX_PROMPT_CHARS): slots that "
                                           "repeat slots multiply (each level doubles {a} {a})")
            if steps > MAX_EXPANSION_STEPS:
                raise self.validator.error(where, f"one item of this template can expand {_big(steps)} slot "
                                           f"references; the limit is {MAX_EXPANSION_STEPS} "
                                           "(MAX_EXPANSION_STEPS)")

    def visit(self, name: str, chain: list, strict: bool) -> None:
        if self.state.get(name) == "done":
            return
        self.state[name] = "visiting"
        stack = chain + [name]
        if len(stack) > MAX_SLOT_DEPTH:
            raise self.validator.error(self.where[name], f"slots nest more than {MAX_SLOT_DEPTH} levels deep "
                                       f"({' -> '.join(stack[:4])} -> ... -> {name}); the limit is "
                                       f"{MAX_SLOT_DEPTH} (MAX_SLOT_DEPTH)")
        for index, entry in enumerate(self.table[name]):
            for ref in split_template(entry.text)[1]:
                if ref not in self.table:
                    if not strict:   # an unused pack slot may rely on other classes' slots
                        continue
                    raise self.validator.error(self.where[name] + (index,),
                                               _unknown(ref, self.table, self.cls.label))
                if self.state.get(ref) == "visiting":
                    raise self.validator.error(
                        self.where[name] + (index,), "reference cycle: "
                        + " -> ".join(stack[stack.index(ref):] + [ref]) + f" (class {self.cls.label!r})")
                self.visit(ref, stack, strict)
        # the longest chain below this slot (a memoised walk can miss it on the stack above)
        below = [self.depth[r] for e in self.table[name] for r in split_template(e.text)[1] if r in self.depth]
        self.depth[name] = 1 + max(below, default=0)
        if self.depth[name] > MAX_SLOT_DEPTH:
            raise self.validator.error(self.where[name], f"slots below {name!r} nest {self.depth[name]} levels "
                                       f"deep; the limit is {MAX_SLOT_DEPTH} (MAX_SLOT_DEPTH)")
        self.state[name] = "done"

    def entry_bound(self, entry: Entry) -> tuple:
        """(max characters, max slot expansions) of one entry; slots are acyclic and at most
        MAX_SLOT_DEPTH deep here, and each slot's bound is computed once."""
        literals, refs = split_template(entry.text)
        chars, steps = sum(len(t) for t in literals), len(refs)
        for ref in refs:
            if ref not in self.bounds:
                each = [self.entry_bound(e) for e in self.table[ref] if e.weight > 0]
                self.bounds[ref] = (max(b[0] for b in each), max(b[1] for b in each))
            chars, steps = chars + self.bounds[ref][0], steps + self.bounds[ref][1]
        return chars, steps


def _big(n: int) -> str:
    return str(n) if n < 10 ** 9 else f"about {float(n):.3g}"


def _unknown(ref: str, known, label: Optional[str] = None) -> str:
    hint = difflib.get_close_matches(ref, list(known), n=1)
    return (f"unknown slot {{{ref}}}" + (f" in class {label!r}" if label else "")
            + (f" (did you mean {{{hint[0]}}}?)" if hint else "")
            + f"; defined slots: {', '.join(sorted(known)) or 'none'}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing"


def _normal_entries(entries: tuple) -> list:
    return [[e.text, e.weight] for e in entries]


def _normal_slots(slots: Mapping) -> dict:
    return {name: _normal_entries(entries) for name, entries in slots.items()}


# --------------------------------------------------------------------------------------------
# Files: loading with a cache


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 32


def load_pack(path: str) -> Pack:
    """Load a pack file; repeated loads of an unchanged file (same mtime and size) are free."""
    path = os.path.abspath(os.fspath(path))
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise PromptPackError(f"cannot read prompt pack: {exc.strerror}", file=path) from None
    if stat.st_size > MAX_PACK_BYTES:
        raise PromptPackError(f"the pack is {stat.st_size} bytes; the limit is {MAX_PACK_BYTES} bytes "
                              "(MAX_PACK_BYTES)", file=path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise PromptPackError(f"cannot read prompt pack: {exc.strerror}", file=path) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptPackError(f"not UTF-8 text (byte {exc.start})", file=path) from None
    pack = parse_pack(text, source=path)
    with _CACHE_LOCK:
        for old in [k for k in _CACHE if k[0] == path]:
            del _CACHE[old]
        while len(_CACHE) >= _CACHE_SIZE:
            del _CACHE[next(iter(_CACHE))]
        _CACHE[key] = pack
    return pack
