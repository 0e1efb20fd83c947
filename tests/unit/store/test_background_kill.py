"""kill -9 while the background writer has items in flight: a subprocess hands over 60 items (15
batches of 4, 384 x 384 noise PNGs, so encoding and writing take a while) and is killed once the
manifest shows some of them but not all. Then: no corrupt file, no line without its file, files
without a line only in orphans/, and a resume that hands over all 60 stores exactly the missing
ones, ending with 60 distinct ids."""
import os
import signal
import subprocess
import sys
import time

import pytest
from dtgen.nodes.store import background, manifest
from dtgen.nodes.store.reconcile import IMAGE_SUFFIXES
from dtgen.nodes.store.writer import DatasetWriter
from PIL import Image
from support.pkg import BOOTSTRAP

from support.datasets import check_consistent, make_items

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

N, BATCH, SIZE = 60, 4, 384
TESTS_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = """
import sys
from pathlib import Path
from dtgen.nodes.store import background
sys.path.insert(0, {tests!r})
from support.datasets import make_items
ds, n, batch, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
bw = background.for_dataset(ds)
for start in range(0, n, batch):
    with bw.open() as w:
        bw.submit(w, make_items(range(start, min(n, start + batch)), size=size), {{"m": "h"}}, {{"steps": 1}})
    print("handed over", start, flush=True)
bw.flush()
print("done", flush=True)
"""


def _lines(ds) -> int:
    try:
        return (ds / "manifest.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _placed(ds) -> tuple[bool, bool]:
    """(a temp file is being written, a placed image has no manifest line yet) in images/ and rejected/."""
    names = []
    for tree in ("images", "rejected"):
        try:
            names += [f"{tree}/{d.name}/{f.name}" for d in os.scandir(ds / tree) if d.is_dir()
                      for f in os.scandir(d.path) if f.name.endswith(".png") or ".tmp-" in f.name]
        except FileNotFoundError:
            pass
    temp = any(".tmp-" in n for n in names)
    final = {n for n in names if ".tmp-" not in n}
    if not final:
        return temp, False
    recorded = {r["file"] for r in manifest.read(ds).records}
    return temp, bool(final - recorded)


def _kill_mid_burst(ds, at_least: int, wait_for: str | None = None) -> tuple[int, str]:
    """Run the child; SIGKILL it once the manifest has ``at_least`` lines and then, with
    ``wait_for``, once a file is being written (``temp``) or placed without its line yet
    (``unrecorded``), else a few batches later. Returns (manifest lines, when it was killed)."""
    code = BOOTSTRAP + CHILD.format(tests=TESTS_DIR)
    proc = subprocess.Popen([sys.executable, "-c", code, str(ds), str(N), str(BATCH), str(SIZE)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, why = time.monotonic() + 120, "lines"
    try:
        while _lines(ds) < at_least and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        while wait_for and proc.poll() is None and _lines(ds) < at_least + 3 * BATCH:
            temp, unrecorded = _placed(ds)
            if (temp, unrecorded)[wait_for == "unrecorded"]:
                why = wait_for
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()   # it was still running: killed mid-burst
    return _lines(ds), why


def _check_after_crash(ds) -> dict:
    with DatasetWriter(ds) as w:   # the next open repairs (reconcile)
        reconciled = w.reconciled
    view = check_consistent(ds)    # no line without a file, no file without a line, no temp files
    for rec in view.values():      # 0 corrupt files: every recorded file decodes, at its recorded size
        path = ds / rec["file"]
        assert path.stat().st_size == rec["bytes"], rec["file"]
        with Image.open(path) as im:
            im.load()
            assert im.size == (SIZE, SIZE)
    recorded = {rec["file"] for rec in view.values()}
    for path in ds.rglob("*"):    # leftovers (files without a line) only under orphans/
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            rel = path.relative_to(ds).as_posix()
            assert rel in recorded or rel.startswith("orphans/"), rel
    return {"stored": len(view), "orphans": len(reconciled.orphans), "temps": len(reconciled.temps_removed)}


def test_sigkill_mid_background_burst_loses_only_in_flight_items(tmp_path):
    ds = tmp_path / "ds"
    seen = []
    # three kills, each later in the burst (the next child resumes: stored ids are skipped): after
    # some lines; while a file is being written; after a file was placed and before its line
    for at_least, wait_for in ((5, None), (21, "temp"), (37, "unrecorded")):
        lines, why = _kill_mid_burst(ds, at_least, wait_for)
        assert lines < N, "the burst finished before the kill: make the images bigger"
        seen.append(dict(_check_after_crash(ds), killed=why))
        assert seen[-1]["stored"] >= at_least - BATCH
    print("after each kill:", seen)
    stored = seen[-1]["stored"]
    assert 0 < stored < N
    bw = background.for_dataset(ds)   # resume: hand over all 60 again
    try:
        res = []
        for start in range(0, N, BATCH):
            with bw.open() as w:
                res.append(bw.submit(w, make_items(range(start, start + BATCH), size=SIZE), {"m": "h"}, {"steps": 1}))
        bw.flush()
    finally:
        bw.close()
    assert sum(sum(r.written.values()) for r in res) == N - stored          # exactly the missing ones
    assert sum(sum(r.skipped_duplicate.values()) for r in res) == stored    # the stored ones skipped
    view = check_consistent(ds)
    assert len(view) == N and sorted(r["index"] for r in view.values()) == list(range(N))
    assert len({r["id"] for r in manifest.read(ds).records}) == N
    assert background.existing(ds) is None
