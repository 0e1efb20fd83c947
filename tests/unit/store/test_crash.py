"""Kill writers with SIGKILL at random points and run two writers at once on one dataset."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from dtgen.nodes.store import manifest
from dtgen.nodes.store.lock import DatasetLock
from dtgen.nodes.store.reconcile import reconcile
from dtgen.nodes.store.writer import DatasetWriter
from PIL import Image
from support.pkg import BOOTSTRAP

from support.datasets import check_consistent, make_items

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

N_ITEMS = 40

# Child: writes items [start, stop) in batches of `batch`, printing "ready" once the writer is open.
CHILD = """
import sys
from pathlib import Path
from dtgen.nodes.store.writer import DatasetWriter
sys.path.insert(0, {tests!r})
from support.datasets import make_items
ds, start, stop, batch = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with DatasetWriter(ds) as w:
    print("ready", flush=True)
    for i in range(start, stop, batch):
        w.write(make_items(range(i, min(i + batch, stop))), {{"m": "h"}}, {{"steps": 1}})
"""
TESTS_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _spawn(ds, start, stop, batch):
    code = BOOTSTRAP + CHILD.format(tests=TESTS_DIR)
    return subprocess.Popen([sys.executable, "-c", code, str(ds), str(start), str(stop), str(batch)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _verify_images(ds):
    n = 0
    for path in list((ds / "images").rglob("*.png")) + list((ds / "rejected").rglob("*.png")):
        with Image.open(path) as im:
            im.verify()
        n += 1
    return n


def test_sigkill_at_random_points_then_resume(tmp_path):
    ds = tmp_path / "ds"
    rng = random.Random(1234)
    killed_mid_run = repairs = 0
    for _ in range(30):
        proc = _spawn(ds, 0, N_ITEMS, rng.choice([1, 2, 3]))
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(rng.uniform(0, 0.04))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_mid_run += proc.returncode == -signal.SIGKILL
        with DatasetLock(ds):
            repairs += reconcile(ds).changed
        view = check_consistent(ds)  # no line without file, no file without line, no temp files
        assert _verify_images(ds) == len(view)  # every stored image decodes
    assert killed_mid_run >= 10  # the kills really interrupted writing ...
    assert repairs > 0  # ... and some landed between an image and its manifest line

    done = {r["index"] for r in check_consistent(ds).values()}
    print(f"killed mid-run {killed_mid_run}/30, repairs {repairs}, done before resume {len(done)}")
    with DatasetWriter(ds) as w:
        res = w.write(make_items(range(N_ITEMS)))
    assert sum(res.written.values()) == N_ITEMS - len(done)
    assert sum(res.skipped_duplicate.values()) == len(done)
    view = check_consistent(ds)
    assert sorted(r["index"] for r in view.values()) == list(range(N_ITEMS))
    assert _verify_images(ds) == N_ITEMS


def test_two_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    ds = tmp_path / "ds"
    a = _spawn(ds, 0, 30, 2)
    b = _spawn(ds, 15, 45, 3)  # overlaps indices 15..29
    for p in (a, b):
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    read = manifest.read(ds)
    ids = [r["id"] for r in read.records]
    assert len(ids) == len(set(ids)) == 45  # one line per item, none lost, none twice
    view = check_consistent(ds)
    assert sorted(r["index"] for r in view.values()) == list(range(45))
