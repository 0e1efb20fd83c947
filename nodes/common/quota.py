"""The quota rules: how many accepted images a class still needs (never below zero), and which
items to make next (the one planner of the nodes' resume mode and the queue client)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import islice


def still_needed(target, accepted: int, on_the_way: int = 0) -> int | None:
    """Accepted images still needed to reach ``target``, counting ``on_the_way`` ones as accepted;
    0 when full, None for a class without a target."""
    if target is None:
        return None
    return max(0, int(target) - int(accepted) - int(on_the_way))


def pick_blocks(blocks: Iterable[Sequence[int]], label_of: Callable[[int], str], n: int,
                need: dict[str, int] | None = None, tried: dict[str, int] | None = None) -> list[tuple[int, ...]]:
    """The one answer to "which items next", for the nodes' resume mode and the queue client alike.

    ``blocks``: candidate blocks of item indices in ascending order, each what one prompt makes (a
    block of one is one item; done and busy items already left out), possibly endless: it is read
    only as far as needed. Returns up to ``n`` of them.

    Without ``need`` (no per-class targets) the first ``n`` blocks, in order. With ``need`` ({label:
    images still needed}; a class absent from it is not wanted) a block is taken only while one of
    its items' classes still needs images, and taking it reserves one image of each of its items'
    classes, so a class with 3 missing gets at most 3 items (rejected ones leave a gap for the next
    call). The order is fewest-first: each pick goes to the class with the fewest ``tried`` items
    (stored, in flight and picked so far) among those that still need, ties to the earliest index.
    Without ``tried`` every class starts at 0, so one pick at a time is plain index order (and the
    scan stops at the first block it can take).
    """
    if need is None:
        return [tuple(b) for b in islice(blocks, n)]
    need, counted = dict(need), dict(tried or {})

    def open_label(block) -> str | None:      # the first of its items' classes that still needs images
        return next((lab for lab in map(label_of, block) if need.get(lab, 0) > 0), None)

    wanted = {label: min(n, left) for label, left in need.items() if left > 0}   # enough to choose from
    if not wanted:
        return []   # every target class is full: nothing to scan for
    candidates: dict[str, list[tuple[int, ...]]] = {}
    for block in blocks:
        label = open_label(block)
        if label is not None and len(candidates.setdefault(label, [])) < n:
            candidates[label].append(tuple(block))
            if (tried is None and n == 1) or all(len(candidates.get(lab, ())) >= k for lab, k in wanted.items()):
                break
    picked: list[tuple[int, ...]] = []
    while len(picked) < n:
        open_ = [lab for lab, c in candidates.items() if c]
        if not open_:
            break
        label = min(open_, key=lambda lab: (counted.get(lab, 0), candidates[lab][0][0]))
        block = candidates[label].pop(0)
        if open_label(block) is None:
            continue                           # its classes filled up with earlier picks
        picked.append(block)
        for lab in map(label_of, block):
            counted[lab] = counted.get(lab, 0) + 1
            if lab in need:
                need[lab] -= 1
    return sorted(picked)
