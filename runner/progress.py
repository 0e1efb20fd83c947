"""One status line on stderr: accepted/target per class (per source in a hybrid run), acceptance
rate, items in flight, speed.

On a terminal the line is redrawn in place; in a log (not a tty) a line is printed when the
counts change, at most every ``every`` seconds.
"""
from __future__ import annotations

import sys
import time


def status_line(counts: dict[str, dict[str, int]], targets: dict[str, int] | None, items: int | None,
                in_flight: int, servers: str, elapsed: float, done_in_run: int, width: int = 24,
                by_source: list | None = None) -> str:
    """``by_source``: for a run of several sources (or copy-paste), ``[(name, counts, targets)]``,
    each source's counts toward its own quota and its per-class targets; the bar covers them all."""
    accepted = sum(c.get("accepted", 0) for c in counts.values())
    rejected = sum(c.get("rejected", 0) for c in counts.values())
    stored = accepted + rejected
    parts = []
    if by_source:
        have = sum(_have(c, t) for _, c, t in by_source)
        goal, what = sum(sum(t.values()) for _, _, t in by_source), "accepted"
        parts += [f"{name}: " + (_per_class(c, t) or "-") for name, c, t in by_source]
    elif targets is not None:
        have, goal, what = _have(counts, targets), sum(targets.values()), "accepted"
        parts.append(_per_class(counts, targets))
    else:
        have, goal, what = min(done_in_run, items or 0), items or 0, "items"
    filled = min(width, int(width * have / goal)) if goal else width
    parts.insert(0, f"[{'#' * filled}{'.' * (width - filled)}] {have}/{goal} {what}")
    parts.append(f"acceptance {100 * accepted / stored:.0f}%" if stored else "acceptance -")
    rate = done_in_run / elapsed if elapsed > 0 else 0.0
    parts.append(f"{in_flight} in flight on {servers}")
    parts.append(f"{rate:.2f} items/s")
    return " | ".join(parts)


def _have(counts: dict, targets: dict[str, int]) -> int:
    return sum(min(counts.get(label, {}).get("accepted", 0), t) for label, t in targets.items())


def _per_class(counts: dict, targets: dict[str, int]) -> str:
    return " ".join(f"{label} {counts.get(label, {}).get('accepted', 0)}/{t}" for label, t in targets.items())


class Progress:
    def __init__(self, stream=None, every: float = 5.0):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = every
        self._last_text, self._last_time = None, 0.0

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
        elif force or (text != self._last_text and now - self._last_time >= self.every):
            self.stream.write(text + "\n")
        else:
            return
        self.stream.flush()
        self._last_text, self._last_time = text, now

    def message(self, text: str) -> None:
        """A line of its own (the status line is redrawn after it)."""
        if self.tty:
            self.stream.write("\r\x1b[2K")
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_text = None

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
