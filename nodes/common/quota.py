"""The one quota rule: how many accepted images a class still needs (never below zero)."""
from __future__ import annotations


def still_needed(target, accepted: int, on_the_way: int = 0) -> int | None:
    """Accepted images still needed to reach ``target``, counting ``on_the_way`` ones as accepted;
    0 when full, None for a class without a target."""
    if target is None:
        return None
    return max(0, int(target) - int(accepted) - int(on_the_way))
