"""Item ``i`` of a prompt pack -> ``PromptItem``, as a pure function of (pack, mode, seed, classes, i).

No item list is ever built: every item is computed on its own in O(1) (O(depth) of slot nesting),
from blake2b hashes of (pack_hash, base seed, i) — never Python's ``hash()`` or ``random`` — so
the same item comes out in every process and on every machine. Per pack, templates are compiled
once into literal/reference tuples with cumulative weight tables and combination-space sizes.

Modes:
- ``balanced``: item i is of class ``classes[i % n]`` (pack order), so any prefix is balanced
  to within one item per class; template and slot entries are drawn by weight.
- ``random``: the class too is drawn by weight.
- ``exhaustive``: every combination of every class exactly once (see ``_Choice.locate`` and
  ``_Phrase`` for the order); item ``i >= total`` is an error.
``total`` is always the size of the combination space; balanced and random accept any i >= 0
(they draw with replacement), so there ``total`` only says how many distinct prompts exist.
"""
from __future__ import annotations

import hashlib
import struct
import threading
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import chain

from ..common.errors import shown
from ..common.identity import StreamKey, stream_id
from .pack_model import Pack, PromptPackError, split_template

MODES = ("balanced", "random", "exhaustive")
MAX_COUNT = 4096        # items one queue run may fan out (the sampler node's count limit)
SEED_BITS = 53          # per-item seeds < 2**53: exact in JSON/JavaScript, inside KSampler's range
_U32 = 1 << 32
_UNPACK16 = struct.Struct("<16I").unpack
_UNTIDY = ("  ", ",,", " ,")    # what empty or padded entries leave behind; see tidy()


@dataclass(slots=True)
class PromptItem:
    """One sampled item; ``seed`` is the image seed, ``metadata`` is JSON-serialisable."""

    index: int
    label: str
    positive: str
    negative: str
    seed: int
    metadata: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Compiled pack: a tree of choices (vocabularies) and phrases (template or entry text)


class _Phrase:
    """A template or vocabulary entry: literal pieces around slot references.

    Its combinations are the product of its references' spaces. In exhaustive order the index
    is split into one digit per reference in a *rotated* mixed radix: digits are taken largest
    space first, and each digit is shifted by the number formed by the digits before it
    (``c = (d + lower) % size``). That is a bijection, and while the index counts up from 0 every
    reference steps through all of its values within its first ``size`` indices — instead of the
    last reference of a plain odometer changing only once per product of the others.
    """

    __slots__ = ("index", "text", "literals", "refs", "size", "digit_order")

    def __init__(self, index: int, text: str, literals: tuple, refs: tuple):
        self.index, self.text, self.literals, self.refs = index, text, literals, refs
        size = 1
        for ref in refs:
            size *= ref.size
        self.size = size
        self.digit_order = tuple(sorted(range(len(refs)), key=lambda k: -refs[k].size))


class _Choice:
    """A weighted set of phrases: a slot's vocabulary, a class's templates, or the classes.

    Exhaustive order over its alternatives is round-robin while each still has combinations
    left (sizes may differ): alternative ``a`` gets its own indices 0, 1, 2 ... in turn. Rounds
    are grouped into phases with the same set of live alternatives, so ``locate`` is a bisect.
    """

    __slots__ = ("name", "alts", "n", "cum", "total_weight", "uniform", "size", "flat",
                 "phase_starts", "phases")

    def __init__(self, name: str, alts: list, weights: list, sizes: list):
        self.name = name
        self.alts, self.n = tuple(alts), len(alts)
        cum, running = [], 0.0
        for w in weights:
            running += w
            cum.append(running)
        self.cum, self.total_weight = tuple(cum), running
        self.uniform = len(set(weights)) == 1
        self.size = sum(sizes)
        self.flat = all(s == 1 for s in sizes)
        phases, first_round, item = [], 0, 0
        for end_round in sorted(set(sizes)):
            live = tuple(k for k, s in enumerate(sizes) if s >= end_round)
            phases.append((item, first_round, live))
            item += (end_round - first_round) * len(live)
            first_round = end_round
        self.phases = tuple(phases)
        self.phase_starts = tuple(p[0] for p in phases)

    def pick(self, u32: int) -> int:
        """Alternative index for a uniform 32-bit draw, by weight."""
        if self.uniform:
            return (u32 * len(self.alts)) >> 32
        k = bisect_right(self.cum, u32 * self.total_weight / _U32)
        return k if k < len(self.alts) else len(self.alts) - 1

    def locate(self, x: int) -> tuple:
        """Exhaustive index ``x`` in [0, size) -> (alternative, index inside it)."""
        if self.flat:
            return x, 0
        start, first_round, live = self.phases[bisect_right(self.phase_starts, x) - 1]
        rounds, slot = divmod(x - start, len(live))
        return live[slot], first_round + rounds


class _CompiledClass:
    __slots__ = ("cls", "templates", "base_metadata", "class_metadata", "tidy_free")

    def __init__(self, pack: Pack, cls):
        table = pack.slot_table(cls)
        memo: dict = {}
        texts: list = []

        def choice(name: str, entries) -> _Choice:
            alts, weights, sizes = [], [], []
            for index, entry in enumerate(entries):
                if entry.weight <= 0:      # weight 0 = never chosen, not even exhaustively
                    continue
                literals, refs = split_template(entry.text)
                phrase = _Phrase(index, entry.text, literals, tuple(slot(r) for r in refs))
                texts.append(entry.text)
                alts.append(phrase)
                weights.append(entry.weight)
                sizes.append(phrase.size)
            return _Choice(name, alts, weights, sizes)

        def slot(name: str) -> _Choice:
            if name not in memo:
                memo[name] = choice(name, table[name])
            return memo[name]

        self.cls = cls
        self.templates = choice("template", cls.templates)
        # No text can leave doubled spaces/commas or bare edges: tidy() can be skipped per item.
        self.tidy_free = all(t and t == t.strip(", ") and not any(b in t for b in _UNTIDY)
                             for t in texts + [t for t in (pack.trigger, pack.suffix) if t])
        self.class_metadata = dict(cls.metadata)
        self.base_metadata = {
            "pack": pack.name, "pack_hash": pack.pack_hash, "label": cls.label,
            "class_index": cls.index, "order": cls.order, "clip_text": cls.clip_text,
        }


class _CompiledPack:
    def __init__(self, pack: Pack):
        self.classes = tuple(_CompiledClass(pack, cls) for cls in pack.classes)
        prefix = pack.trigger + ", " if pack.trigger else ""
        self.prefix, self.suffix = prefix, (", " + pack.suffix if pack.suffix else "")


_COMPILED: dict = {}
_COMPILED_SIZE = 16
_COMPILED_LOCK = threading.Lock()


def _compiled(pack: Pack) -> _CompiledPack:
    """Per-pack tables, shared by every sampler of the same pack content."""
    with _COMPILED_LOCK:
        found = _COMPILED.get(pack.pack_hash)
        if found is None:
            found = _CompiledPack(pack)
            while len(_COMPILED) >= _COMPILED_SIZE:
                _COMPILED.pop(next(iter(_COMPILED)))
            _COMPILED[pack.pack_hash] = found
        return found


# --------------------------------------------------------------------------------------------
# Expansion


def _draws(base, i: int):
    """The first 16 uniform 32-bit draws of item i: one blake2b digest of (pack_hash, seed, i)."""
    h = base.copy()
    h.update(b"%d" % i)
    return iter(_UNPACK16(h.digest()))


def _long_draws(base, i: int):
    """All draws of item i, for the rare item that needs more than 16 (deep nesting)."""
    return chain(_draws(base, i), _more_draws(base, i))


def _more_draws(base, i: int):
    block = 0
    while True:
        block += 1
        h = base.copy()
        h.update(b"%d/%d" % (i, block))
        yield from _UNPACK16(h.digest())


def _expand_drawn(phrase: _Phrase, draws, parts: list, picks: dict) -> None:
    """Append the text of ``phrase`` to ``parts``, drawing each referenced entry by weight."""
    literals = phrase.literals
    parts.append(literals[0])
    k = 0
    for choice in phrase.refs:
        k += 1
        u = next(draws)
        alt = choice.alts[(u * choice.n) >> 32] if choice.uniform else choice.alts[choice.pick(u)]
        if alt.refs:
            start = len(parts)
            _expand_drawn(alt, draws, parts, picks)
            _record(picks, choice.name, "".join(parts[start:]))
        else:
            parts.append(alt.text)
            if choice.name in picks:
                _record(picks, choice.name, alt.text)
            else:
                picks[choice.name] = alt.text
        parts.append(literals[k])


def _expand_indexed(phrase: _Phrase, x: int, parts: list, picks: dict) -> None:
    """Append the text of combination ``x`` of ``phrase`` (rotated mixed radix, see _Phrase)."""
    refs = phrase.refs
    digits = [0] * len(refs)
    lower, place = 0, 1
    for k in phrase.digit_order:
        size = refs[k].size
        x, d = divmod(x, size)
        digits[k] = (d + lower) % size
        lower += place * d
        place *= size
    literals = phrase.literals
    parts.append(literals[0])
    for k, choice in enumerate(refs):
        a, sub = choice.locate(digits[k])
        alt = choice.alts[a]
        if alt.refs:
            start = len(parts)
            _expand_indexed(alt, sub, parts, picks)
            _record(picks, choice.name, "".join(parts[start:]))
        else:
            _record(picks, choice.name, alt.text)
            parts.append(alt.text)
        parts.append(literals[k + 1])


def _record(picks: dict, name: str, text: str) -> None:
    """Record a slot choice; the same slot used again is stored as name#2, name#3 ..."""
    if name in picks:
        n = 2
        while f"{name}#{n}" in picks:
            n += 1
        name = f"{name}#{n}"
    picks[name] = text


def tidy(text: str) -> str:
    """Collapse doubled spaces and commas left by empty entries; strip stray edges."""
    if any(bad in text for bad in _UNTIDY) or text[:1] in ", " or text[-1:] in ", ":
        pieces = (" ".join(p.split()) for p in text.split(","))
        text = ", ".join(p for p in pieces if p)
    return text


# --------------------------------------------------------------------------------------------
# The sampler


class Sampler:
    """Deterministic prompt items from a pack. ``item(i)`` is pure and O(1).

    ``labels``: sampled classes in pack order; ``class_totals``: combinations per label;
    ``total``: their sum. ``classes`` (labels, None or empty = all) restricts the classes.
    """

    def __init__(self, pack: Pack, mode: str = "balanced", seed: int = 0, classes=None):
        if mode not in MODES:
            raise PromptPackError(f"unknown mode {shown(mode)}; choose one of {', '.join(MODES)}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
            raise PromptPackError(f"seed must be an integer in 0 .. 2**64-1, got {shown(seed)}")
        self.pack, self.mode, self.seed = pack, mode, seed
        compiled = _compiled(pack)
        self._prefix, self._suffix = compiled.prefix, compiled.suffix

        wanted = [classes] if isinstance(classes, str) else list(classes or [])
        unknown = [label for label in wanted if label not in pack.labels]
        if unknown:
            raise PromptPackError(f"unknown class {shown(unknown[0])} in the class subset; pack "
                                  f"{pack.name!r} has {', '.join(pack.labels)}", file=pack.source)
        chosen = set(wanted)
        self._classes = tuple(c for c in compiled.classes if not chosen or c.cls.label in chosen)
        self.labels = tuple(c.cls.label for c in self._classes)
        self.class_totals = {c.cls.label: c.templates.size for c in self._classes}
        self.total = sum(self.class_totals.values())
        self._class_choice = _Choice(
            "class", list(self._classes), [c.cls.weight for c in self._classes],
            [c.templates.size for c in self._classes])

        pack_key = bytes.fromhex(pack.pack_hash)
        self._draw_base = hashlib.blake2b(digest_size=64, key=pack_key, person=b"dtgen.draw")
        self._draw_base.update(b"%d:" % seed)
        self._seed_base = hashlib.blake2b(digest_size=8, person=b"dtgen.seed")
        self._seed_base.update(b"%d:" % seed)
        self._n_classes = len(self._classes)
        self.stream = stream_id(pack.pack_hash, mode, seed, self.labels)
        self.stream_key = StreamKey(self.stream, seed, mode)

    def item_seed(self, i: int) -> int:
        """The image seed of item i: depends on (base seed, i) only, < 2**53."""
        h = self._seed_base.copy()
        h.update(b"%d" % i)
        return int.from_bytes(h.digest(), "little") >> (64 - SEED_BITS)

    def _check_index(self, i) -> int:
        if i.__class__ is not int:         # accept numpy integers, refuse bool / float / str
            if isinstance(i, bool) or not hasattr(i, "__index__"):
                raise PromptPackError(f"item index must be an integer >= 0, got {shown(i)}")
            i = i.__index__()
        if i < 0:
            raise PromptPackError(f"item index must be an integer >= 0, got {shown(i)}")
        if i >= self.total and self.mode == "exhaustive":
            raise PromptPackError(
                f"item {i} is past the end of the exhaustive space: pack {self.pack.name!r} "
                f"({', '.join(self.labels)}) has {self.total} combinations, items 0..{self.total - 1}",
                file=self.pack.source)
        return i

    def item(self, i: int) -> PromptItem:
        """Item i: its class, prompts, image seed and metadata. Pure function of the sampler and i."""
        i = self._check_index(i)
        parts: list = []
        picks: dict = {}
        if self.mode == "exhaustive":
            c, k = self._class_choice.locate(i)
            compiled = self._classes[c]
            t, sub = compiled.templates.locate(k)
            template = compiled.templates.alts[t]
            _expand_indexed(template, sub, parts, picks)
        else:
            try:
                compiled, template = self._drawn(_draws(self._draw_base, i), i, parts, picks)
            except StopIteration:      # > 16 draws: redo with the longer, identical-prefix stream
                parts, picks = [], {}
                compiled, template = self._drawn(_long_draws(self._draw_base, i), i, parts, picks)
        positive = self._prefix + "".join(parts) + self._suffix
        if not compiled.tidy_free:
            positive = tidy(positive)
        seed = self.item_seed(i)
        metadata = {**compiled.base_metadata, "mode": self.mode, "base_seed": self.seed, "stream": self.stream,
                    "index": i, "seed": seed, "class_metadata": dict(compiled.class_metadata),
                    "template": template.index, "slots": picks}
        return PromptItem(i, compiled.cls.label, positive, compiled.cls.negative, seed, metadata)

    def _drawn(self, draws, i: int, parts: list, picks: dict) -> tuple:
        if self.mode == "balanced":
            compiled = self._classes[i % self._n_classes]
        else:
            compiled = self._classes[self._class_choice.pick(next(draws))]
        templates = compiled.templates
        template = templates.alts[templates.pick(next(draws))]
        _expand_drawn(template, draws, parts, picks)
        return compiled, template

    def check_range(self, start: int, count: int) -> range:
        """Indices start .. start+count-1, checked (in exhaustive mode they must fit in ``total``)."""
        if count < 0:
            raise PromptPackError(f"count must be >= 0, got {count}")
        if count:
            self._check_index(start + count - 1)
        return range(start, start + count)

    def items(self, start: int, count: int) -> list:
        """Items start .. start+count-1 (in exhaustive mode the range must fit in ``total``)."""
        return [self.item(i) for i in self.check_range(start, count)]

    def label_of(self, i: int) -> str:
        """The label of item i without expanding its prompt."""
        i = self._check_index(i)
        if self.mode == "balanced":
            return self.labels[i % len(self.labels)]
        if self.mode == "exhaustive":
            return self.labels[self._class_choice.locate(i)[0]]
        return self.labels[self._class_choice.pick(next(_draws(self._draw_base, i)))]


def summary(items: list, shown: int = 5, note: str = "") -> str:
    """The sampler node's text: how many items, then label and prompt of the first few."""
    lines = [f"{len(items)} item(s)" + (f" ({note})" if note else "")]
    lines += [f"#{it.index} {it.label}: {it.positive[:100]}" for it in items[:shown]]
    if len(items) > shown:
        lines.append(f"... and {len(items) - shown} more")
    return "\n".join(lines)
