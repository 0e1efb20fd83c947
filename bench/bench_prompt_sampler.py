"""Prompt sampler throughput and random access.

Prints: prompts per second over 1,000,000 balanced items of the shipped tableware pack, and the
time to produce item 10**12 of an exhaustive space (a generated pack with more than 10**13
combinations), compared in the same run with the time of item 0 of that space.
Run from anywhere: ``python bench/bench_prompt_sampler.py [count]``.
"""
from __future__ import annotations

import os
import sys
import time

from _pkg import ROOT, load_package

load_package()

from dtgen.nodes.prompting.pack import load_pack, parse_pack  # noqa: E402
from dtgen.nodes.prompting.sampler import Sampler  # noqa: E402


def big_pack_text(slots: int = 9, entries: int = 40) -> str:
    """A pack whose exhaustive space is entries**slots per template (40**9 ~ 2.6e14)."""
    lines = ["version: 1", "name: bench_big", "slots:"]
    for s in range(slots):
        lines.append(f"  s{s}: [" + ", ".join(f"w{s}_{e}" for e in range(entries)) + "]")
    template = " ".join(f"{{s{s}}}" for s in range(slots))
    lines += ["classes:", "  - label: a", f"    templates: [\"{template}\"]",
              "  - label: b", f"    templates: [\"x {template}\"]"]
    return "\n".join(lines) + "\n"


def time_per_call(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    if hasattr(os, "getloadavg"):
        print(f"load average before the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    pack = load_pack(ROOT / "prompts" / "tableware.yaml")
    for mode in ("balanced", "random", "exhaustive"):
        sampler = Sampler(pack, mode, seed=1234)
        n = min(count, sampler.total) if mode == "exhaustive" else count
        start = time.perf_counter()
        for i in range(n):
            sampler.item(i)
        elapsed = time.perf_counter() - start
        print(f"tableware {mode:10s}: {n:,} items in {elapsed:.2f} s = {n / elapsed:,.0f} prompts/s")

    big = Sampler(parse_pack(big_pack_text(), "bench_big"), "exhaustive", seed=1)
    far = 10 ** 12
    t_far = time_per_call(lambda: big.item(far), 2000)
    t_zero = time_per_call(lambda: big.item(0), 2000)
    print(f"exhaustive space of {big.total:.3e} combinations:")
    print(f"  item 10**12: {t_far * 1e6:.1f} us   item 0: {t_zero * 1e6:.1f} us   "
          f"ratio {t_far / t_zero:.2f}")
    print(f"  item 10**12 = {big.item(far).positive!r}")


if __name__ == "__main__":
    main()
