"""The watchdog of a local Ray (runner/ray/cluster.py starts it): outlives a killed driver long enough to
stop what that Ray started. Stdlib only, run by path in an isolated interpreter::

    python -I runner/ray/watchdog.py DTGEN_RAY_RUN=<token> <driver pid> <shim folder> <ray package folder>

It reads stdin until the driver's end of the pipe closes (the driver exited or was killed),
meanwhile remembering every process below the driver's Ray processes (raylet, GCS, ...; Linux
/proc). Then, for up to 30 s, it SIGKILLs those still alive (same pid and start time) and every
process whose environment carries the run's mark, and removes the shim folder.
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import time

Table = dict[int, tuple[int, bytes, bytes]]


def table() -> Table:
    """pid -> (ppid, start time, command line) of every process still running (no zombies)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if stat[0] in (b"Z", b"X"):   # dead already (a zombie its parent has not reaped)
            continue
        out[int(entry)] = (int(stat[1]), stat[19], cmd)
    return out


def ray_tree(procs: Table, driver: int, package: bytes) -> dict[int, bytes]:
    """The driver's Ray children (their command line names the ray package) and everything below
    them: pid -> start time."""
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    todo = [p for p in kids.get(driver, []) if package in procs[p][2]]
    found = {}
    while todo:
        pid = todo.pop()
        if pid in found or pid not in procs:
            continue
        found[pid] = procs[pid][1]
        todo.extend(kids.get(pid, []))
    return found


def left(known: dict[int, bytes], mark: bytes, spare: tuple[int, ...]) -> list[int]:
    """Processes still alive that the driver's Ray started, or that carry the mark."""
    out = []
    for pid, (_, start, _) in table().items():
        if pid in spare:
            continue
        if known.get(pid) == start:
            out.append(pid)
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if mark in env:
            out.append(pid)
    return out


def main(argv: list[str]) -> None:
    mark, driver, shim, package = argv[0].encode(), int(argv[1]), argv[2], argv[3].encode()
    known: dict[int, bytes] = {}   # seen below the driver's Ray while the driver lived
    while True:   # until the driver exits or is killed (its end of the pipe closes)
        ready, _, _ = select.select([sys.stdin], [], [], 1.0)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break
        known.update(ray_tree(table(), driver, package))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = left(known, mark, (os.getpid(), driver))
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.3)
    shutil.rmtree(shim, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
