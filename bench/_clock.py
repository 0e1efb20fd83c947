"""The benches' one timer: wall-clock seconds, or CPU seconds of the main thread (``--clock cpu``)."""
from __future__ import annotations

import time

CLOCK = {"wall": time.perf_counter, "cpu": time.thread_time}
_clock = [time.perf_counter]


def clock() -> float:
    """The bench's timer: wall-clock seconds, or (``--clock cpu``) this thread's CPU seconds, which
    other processes on a shared CPU do not inflate (with one torch thread all the work runs on it)."""
    return _clock[0]()


def use_clock(name: str) -> None:
    """Select the timer; ``cpu`` also sets one torch thread (else other threads' work goes uncounted)."""
    import torch

    _clock[0] = CLOCK[name]
    if name == "cpu":
        torch.set_num_threads(1)
