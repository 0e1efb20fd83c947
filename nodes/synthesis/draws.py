"""Uniform draws of one synthesised item: a keyed stream, the same in every process.

blake2b(key, person) seeds a PCG64; each draw takes 53 bits of it as a double in [0, 1). So item
``i`` of a copy-paste or defect-mask stream is a pure function of its key, never of call order.
"""
from __future__ import annotations

import hashlib

import numpy as np

_U53 = 1.0 / (1 << 53)


class Draws:
    def __init__(self, key: str, person: bytes):
        h = hashlib.blake2b(key.encode(), digest_size=16, person=person)
        self._bits = np.random.PCG64(int.from_bytes(h.digest(), "little"))

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * ((int(self._bits.random_raw()) >> 11) * _U53)

    def below(self, n: int) -> int:
        return min(int(self.uniform() * n), n - 1)
