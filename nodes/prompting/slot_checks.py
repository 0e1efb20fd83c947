"""The slot graph of a parsed pack: every ``{name}`` must resolve, without cycles, within the
nesting and expansion budgets. The prompt bounds are computed from the pack (the largest prompt
any item can reach), not by sampling, each slot's bound once.
"""
from __future__ import annotations

import difflib
from typing import Callable, Optional

from .pack_model import Entry, PackClass, PromptPackError, split_template

MAX_SLOT_DEPTH = 32              # slots referencing slots referencing slots ...
MAX_PROMPT_CHARS = 20_000        # longest prompt any item of a class can expand to
MAX_EXPANSION_STEPS = 2_000      # slot references one item can expand

# error(YAML path, message): the PromptPackError naming file, path and line
ErrorAt = Callable[[tuple, str], PromptPackError]


def check_references(error: ErrorAt, pack_slots: dict, classes: list, fixed_chars: int = 0) -> None:
    """Every ``{name}`` a class can reach must resolve, without cycles, within the expansion
    budgets (``fixed_chars``: trigger and suffix, added to every prompt)."""
    known_anywhere = set(pack_slots).union(*(c.slots for c in classes))
    for name, entries in pack_slots.items():
        for index, entry in enumerate(entries):
            for ref in split_template(entry.text)[1]:
                if ref not in known_anywhere:
                    raise error(("slots", name, index), _unknown(ref, known_anywhere))
    for cls in classes:
        _ClassReferences(error, pack_slots, cls).check(fixed_chars)


class _ClassReferences:
    """Depth-first walk of one class's slot graph: unknown references, cycles, nesting depth, and
    the largest prompt (characters, slot expansions) any item of the class can expand to."""

    def __init__(self, error: ErrorAt, pack_slots: dict, cls: PackClass):
        self.error, self.cls = error, cls
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
                    raise self.error(("classes", cls.index, "templates", index),
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
                raise self.error(where, f"this template can expand to {_big(chars)} characters; "
                                 f"the limit is {MAX_PROMPT_CHARS} (MAX_PROMPT_CHARS): slots that "
                                 "repeat slots multiply (each level doubles {a} {a})")
            if steps > MAX_EXPANSION_STEPS:
                raise self.error(where, f"one item of this template can expand {_big(steps)} slot "
                                 f"references; the limit is {MAX_EXPANSION_STEPS} "
                                 "(MAX_EXPANSION_STEPS)")

    def visit(self, name: str, chain: list, strict: bool) -> None:
        if self.state.get(name) == "done":
            return
        self.state[name] = "visiting"
        stack = chain + [name]
        if len(stack) > MAX_SLOT_DEPTH:
            raise self.error(self.where[name], f"slots nest more than {MAX_SLOT_DEPTH} levels deep "
                             f"({' -> '.join(stack[:4])} -> ... -> {name}); the limit is "
                             f"{MAX_SLOT_DEPTH} (MAX_SLOT_DEPTH)")
        for index, entry in enumerate(self.table[name]):
            for ref in split_template(entry.text)[1]:
                if ref not in self.table:
                    if not strict:   # an unused pack slot may rely on other classes' slots
                        continue
                    raise self.error(self.where[name] + (index,), _unknown(ref, self.table, self.cls.label))
                if self.state.get(ref) == "visiting":
                    raise self.error(
                        self.where[name] + (index,), "reference cycle: "
                        + " -> ".join(stack[stack.index(ref):] + [ref]) + f" (class {self.cls.label!r})")
                self.visit(ref, stack, strict)
        # the longest chain below this slot (a memoised walk can miss it on the stack above)
        below = [self.depth[r] for e in self.table[name] for r in split_template(e.text)[1] if r in self.depth]
        self.depth[name] = 1 + max(below, default=0)
        if self.depth[name] > MAX_SLOT_DEPTH:
            raise self.error(self.where[name], f"slots below {name!r} nest {self.depth[name]} levels "
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
