"""kill -9 while items with instance masks are written: at each step of the write protocol and at
random points. After the repair any reader makes there is no mask without its image and no image
without its mask; resume stores every item once with the right mask; COCO export round-trips."""
import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dtgen.nodes.curation.finalize import finalize
from dtgen.nodes.store.lock import DatasetLock
from dtgen.nodes.store.reconcile import ensure_consistent, reconcile
from dtgen.nodes.store.writer import DatasetWriter
from PIL import Image
from support.pkg import BOOTSTRAP

from support.datasets import check_consistent

pytestmark = [pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]   # pycocotools

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ITEMS = str(Path(__file__).with_name("test_masks.py"))   # masked_item(i): the one definition


def _items_module():
    spec = importlib.util.spec_from_file_location("dtgen_masked_items", ITEMS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


masked_item = _items_module().masked_item

LOAD_ITEMS = """
import importlib.util, sys
sys.path.insert(0, {tests!r})
spec = importlib.util.spec_from_file_location("dtgen_masked_items", {items!r})
items = importlib.util.module_from_spec(spec); spec.loader.exec_module(items)
"""

# Dies at call `n` of `step`: before it, after it, or (masks.encode) half-way through the mask PNG.
STEP_CHILD = """
import os
from pathlib import Path
from dtgen.nodes.store import writer as W, embeddings, manifest, masks, metadata
ds, step, n, when = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
owner, _, name = step.rpartition(".")
owner = {"": W, "embeddings": embeddings, "manifest": manifest, "masks": masks, "metadata": metadata}[owner]
real, calls = getattr(owner, name), [0]
def killed(*args, **kwargs):
    calls[0] += 1
    if calls[0] != n:
        return real(*args, **kwargs)
    if when == "inside":
        args[1].write(b"\\x89PNG\\r\\n half a mask"); args[1].flush(); os._exit(9)
    if when == "after":
        real(*args, **kwargs)
    os._exit(9)
with W.DatasetWriter(ds) as w:
    w.write([items.masked_item(i) for i in range(5)])
    setattr(owner, name, killed)
    w.write([items.masked_item(i) for i in range(5, 10)])
print("not killed", flush=True)
"""

# Writes items [start, stop) in batches, printing "ready" once the writer is open.
RANDOM_CHILD = """
from pathlib import Path
from dtgen.nodes.store.writer import DatasetWriter
ds, start, stop, batch = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with DatasetWriter(ds) as w:
    print("ready", flush=True)
    for i in range(start, stop, batch):
        w.write([items.masked_item(j) for j in range(i, min(i + batch, stop))])
"""


def _code(child: str) -> str:
    return BOOTSTRAP + LOAD_ITEMS.format(tests=TESTS_DIR, items=ITEMS) + child


def check_pairs(ds) -> dict:
    """check_consistent, plus: every stored mask holds exactly its item's instance map."""
    view = check_consistent(ds)
    for rec in view.values():
        item = masked_item(rec["index"])
        if item.instance_map is None:
            assert rec["mask"] is None and rec["instances"] == []
            continue
        with Image.open(ds / rec["mask"]) as im:
            assert np.array_equal(np.asarray(im), item.instance_map.astype(np.uint8)), rec["mask"]
        assert len(rec["instances"]) == len(item.instance_labels)
    return view


# (step, call, when): the first batch item's mask and image are write_atomic calls 1 and 2
STEPS = [("write_atomic", 1, "after"),       # after the mask was written: a mask without its image
         ("write_atomic", 2, "before"),      # the same, seen from the image's side
         ("write_atomic", 2, "after"),       # after the image was written: both, no line
         ("write_atomic", 3, "before"),      # one item placed, the next not begun
         ("masks.encode", 2, "inside"),      # half a mask PNG in its temp file
         ("embeddings.append", 1, "after"),  # before the manifest line
         ("manifest.append", 1, "before"),
         ("manifest.append", 1, "after"),    # the line is there, metadata.jsonl is not
         ("metadata.append", 1, "after"),
         ("mark_clean", 1, "before")]


@pytest.mark.parametrize("step,n,when", STEPS, ids=[f"{s}-{n}-{w}" for s, n, w in STEPS])
def test_kill_at_each_step_leaves_masks_and_images_together(tmp_path, step, n, when):
    ds = tmp_path / "ds"
    proc = subprocess.run([sys.executable, "-c", _code(STEP_CHILD), str(ds), step, str(n), when],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stdout + proc.stderr     # it really died at that step
    ensure_consistent(ds)                                      # a reader repairs on open
    view = check_pairs(ds)
    assert sorted(r["index"] for r in view.values())[:5] == list(range(5))
    committed = step in ("manifest.append", "metadata.append", "mark_clean") and (step, when) != (
        "manifest.append", "before")
    assert len(view) == (10 if committed else 5)
    orphans = {p.relative_to(ds / "orphans").parts[0] for p in (ds / "orphans").rglob("*.png")} \
        if (ds / "orphans").is_dir() else set()
    if (step, n) == ("write_atomic", 1) or (step, n, when) == ("write_atomic", 2, "before"):
        assert orphans == {"masks"}                            # the mask alone, parked
    if (step, n, when) == ("write_atomic", 2, "after"):
        assert orphans == {"masks", "images"} or orphans == {"masks", "rejected"}
    with DatasetWriter(ds) as w:                               # resume: every item exactly once
        w.write([masked_item(i) for i in range(10)])
    assert sorted(r["index"] for r in check_pairs(ds).values()) == list(range(10))


def test_sigkill_at_random_points_then_resume_and_export(tmp_path):
    pycocotools = pytest.importorskip("pycocotools.coco")
    ds, n_items = tmp_path / "ds", 30
    rng = random.Random(4321)
    killed = repairs = 0
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", _code(RANDOM_CHILD), str(ds), "0", str(n_items),
                                 str(rng.choice([1, 2, 3]))], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close(), proc.stderr.close()
        killed += proc.returncode == -signal.SIGKILL
        with DatasetLock(ds):
            repairs += reconcile(ds).changed
        check_pairs(ds)
    assert killed >= 5 and repairs > 0
    with DatasetWriter(ds) as w:
        w.write([masked_item(i) for i in range(n_items)])
    view = check_pairs(ds)
    assert sorted(r["index"] for r in view.values()) == list(range(n_items))

    rep = finalize(ds, echo=False)                             # instances present: COCO + YOLO by default
    coco = pycocotools.COCO(str(ds / rep.exports["coco"]["files"]["all"]))
    accepted = {r["id"]: r for r in view.values() if r["decision"] == "accepted"}
    assert len(coco.getImgIds()) == len(accepted)
    for ann in coco.loadAnns(coco.getAnnIds()):
        rec = accepted[coco.imgs[ann["image_id"]]["dtgen_id"]]
        with Image.open(ds / rec["mask"]) as im:
            assert np.array_equal(coco.annToMask(ann), (np.asarray(im) == ann["instance_id"]).astype(np.uint8))
    assert len(coco.getAnnIds()) == sum(len(r["instances"]) for r in accepted.values())
