"""The background dataset writer (store/background.py): the same dataset as the synchronous path,
a bounded queue, errors that are raised (naming the file) and never lost, flush before readers,
cancellable waits. Real files and real PIL; slow or failing encoders and sinks are injected through
``BackgroundWriter``'s parameters. The kill -9 test is in test_background_kill.py."""
import errno
import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from dtgen.nodes.common.identity import StreamKey
from dtgen.nodes.curation.claims import claim_missing_indices
from dtgen.nodes.curation.finalize import finalize
from dtgen.nodes.store import background, manifest
from dtgen.nodes.store.layout import DatasetWriteError
from dtgen.nodes.store.reader import history_fingerprint, live_records
from dtgen.nodes.store.writer import DatasetWriter, encode_image, summary
from PIL import Image

from support.datasets import check_consistent, make_item, make_items


@pytest.fixture(autouse=True)
def _close_writers():
    yield
    for bw in list(background._REGISTRY.values()):
        try:
            bw.close()
        except DatasetWriteError:
            pass


def _masked(i: int, size: int = 24):
    item = make_item(i, size=size)
    if i % 3 == 1:   # some items carry an instance mask (two discs)
        y, x = np.mgrid[0:size, 0:size]
        imap = np.zeros((size, size), np.uint16)
        imap[(x - 6) ** 2 + (y - 6) ** 2 < 16] = 1
        imap[(x - 16) ** 2 + (y - 16) ** 2 < 16] = 2
        item.instance_map, item.instance_labels = imap, (item.label, item.label)
    return item


def _records(ds: Path) -> list[dict]:
    lines = [json.loads(x) for x in (ds / "manifest.jsonl").read_text().splitlines()]
    for rec in lines:
        rec.pop("time")   # the only field that depends on when it was written
    return lines


def _tree(ds: Path) -> dict[str, bytes]:
    """Every stored file's bytes (images, masks, embeddings, metadata) by relative path."""
    return {str(p.relative_to(ds)): p.read_bytes() for p in sorted(ds.rglob("*"))
            if p.is_file() and p.name not in ("manifest.jsonl", "dataset.json", ".clean", ".lock")}


BATCHES = [list(range(0, 5)), list(range(3, 9)), list(range(9, 14)) + [2]]   # with duplicates


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_background_then_flush_stores_what_the_sync_path_stores(tmp_path, fmt):
    models, sampler, text = {"ckpt": "sd3.5"}, {"steps": 28}, {"prompt": {"3": {"class_type": "KSampler"}}}
    quotas = {"cat": 3, "dog": 10, "tea cup": 10}
    sync_results, bg_results = [], []
    with DatasetWriter(tmp_path / "sync", image_format=fmt, quotas=quotas) as w:
        for batch in BATCHES:
            sync_results.append(w.write([_masked(i) for i in batch], models, sampler, text))
    bw = background.for_dataset(tmp_path / "bg")
    for batch in BATCHES:   # one node run per batch: no flush in between
        with bw.open(image_format=fmt, quotas=quotas) as w:
            bg_results.append(bw.submit(w, [_masked(i) for i in batch], models, sampler, text))
    bw.flush()
    assert bw.handed_over_count() == 0
    for a, b in zip(sync_results, bg_results):
        assert (a.written, a.skipped_duplicate, a.skipped_quota) == (b.written, b.skipped_duplicate, b.skipped_quota)
        assert [p.relative_to(tmp_path / "sync") for p in a.paths] == [p.relative_to(tmp_path / "bg") for p in b.paths]
    assert _records(tmp_path / "bg") == _records(tmp_path / "sync")      # same lines, same order
    assert _tree(tmp_path / "bg") == _tree(tmp_path / "sync")            # byte-identical files
    view = check_consistent(tmp_path / "bg")
    assert sum(1 for r in view.values() if r.get("mask")) > 0
    with DatasetWriter(tmp_path / "bg", quotas=quotas) as w:
        assert w.status()["cat"]["accepted"] == 3


def test_status_counts_handed_over_items_and_summary_says_so(tmp_path):
    gate = threading.Event()

    def held(*args):
        gate.wait()
        encode_image(*args)

    bw = background.for_dataset(tmp_path / "ds", encode=held)
    with bw.open(quotas={"cat": 2, "dog": 2, "tea cup": 2}) as w:
        res = bw.submit(w, make_items(range(6), accepted=True))
        status = bw.status(w)
        in_flight = bw.handed_over_count()
    assert res.written == {"accepted": 6, "rejected": 0} and in_flight == 6
    assert {label: s["accepted"] for label, s in status.items()} == {"cat": 2, "dog": 2, "tea cup": 2}
    assert all(s["missing"] == 0 for s in status.values())
    assert manifest.read(tmp_path / "ds").records == []   # nothing durable yet
    assert "6 being written in the background" in summary(tmp_path / "ds", res, status, in_flight)
    with bw.open(quotas={"cat": 2, "dog": 2, "tea cup": 2}) as w:   # the quota counts the queue
        again = bw.submit(w, make_items(range(6, 9), accepted=True) + make_items(range(3)))
    assert again.skipped_quota == 3 and sum(again.skipped_duplicate.values()) == 3
    gate.set()
    bw.flush()
    assert len(check_consistent(tmp_path / "ds")) == 6


def test_queue_never_exceeds_its_bound(tmp_path):
    """An encoder slower than the producer: the producer blocks, the backlog stays bounded."""
    bw = None
    seen = []

    def slow(*args):
        seen.append((bw.backlog(), bw.handed_over_count()))   # measured inside the worker, while it writes
        threading.Event().wait(0.01)
        encode_image(*args)

    bw = background.for_dataset(tmp_path / "ds", max_batches=2, encode=slow)
    after_submit = []
    for k in range(10):
        with bw.open() as w:
            bw.submit(w, make_items(range(3 * k, 3 * k + 3), size=32))
        after_submit.append(bw.backlog())
    bw.flush()
    assert len(seen) == 30
    assert max(b for b, _ in seen) <= 3 and max(after_submit) <= 3      # max_batches waiting + 1 being written
    assert max(n for _, n in seen) <= 9                                # items in memory: 3 batches of 3
    assert max(after_submit) == 3                                      # the bound was reached: the producer waited
    assert len(check_consistent(tmp_path / "ds")) == 30


def _failing_sink(fail: dict):
    def sink(f, data):
        if fail["on"]:
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write(data)
    return sink


def test_disk_full_in_the_background_is_raised_on_flush_naming_the_file(tmp_path, caplog):
    fail = {"on": False}
    ds = tmp_path / "ds"
    bw = background.for_dataset(ds, sink=_failing_sink(fail))
    with bw.open() as w:
        bw.submit(w, make_items(range(4)))
    bw.flush()
    fail["on"] = True
    with caplog.at_level(logging.ERROR), bw.open() as w:
        res = bw.submit(w, make_items(range(4, 8)))
        assert sum(res.written.values()) == 4                  # handed over: the node cannot know yet
        with pytest.raises(DatasetWriteError) as err:
            bw.flush()
    msg = str(err.value)
    first = sorted(r["file"] for r in (manifest.live(manifest.read(ds).records).values()))
    assert str(ds / "rejected" / "tea_cup") in msg or str(ds) in msg
    assert "000004_" in msg and "No space left on device" in msg and "background write failed" in msg
    assert "4 handed-over item(s) were not stored" in msg
    assert any("background write" in r.getMessage() and "No space left" in r.getMessage() for r in caplog.records)
    assert len(first) == 4 and len(check_consistent(ds)) == 4   # consistent: the failed batch left nothing
    bw.flush()                                                  # raised once, not again
    fail["on"] = False
    with bw.open() as w:                                        # resume stores the lost items
        res = bw.submit(w, make_items(range(8)))
    bw.flush()
    assert sum(res.written.values()) == 4 and sum(res.skipped_duplicate.values()) == 4
    assert len(check_consistent(ds)) == 8


def test_background_error_is_raised_by_the_next_write(tmp_path):
    fail = {"on": True}
    bw = background.for_dataset(tmp_path / "ds", sink=_failing_sink(fail))
    with bw.open() as w:
        bw.submit(w, make_items(range(2)))
    while bw.backlog():   # let it fail (no flush: the next write must report it)
        threading.Event().wait(0.01)
    with pytest.raises(DatasetWriteError, match=r"000000_.*No space left on device"):
        with bw.open() as w:
            bw.submit(w, make_items(range(2, 4)))
    fail["on"] = False
    with bw.open() as w:
        bw.submit(w, make_items(range(4)))
    bw.flush()
    assert len(check_consistent(tmp_path / "ds")) == 4


def test_encoder_error_names_the_file(tmp_path):
    def broken(arr, fmt, quality, png_text, out):
        raise RuntimeError("encoder exploded")

    bw = background.for_dataset(tmp_path / "ds", encode=broken)
    with bw.open() as w:
        bw.submit(w, make_items(range(2)))
    with pytest.raises(DatasetWriteError, match=r"000000_[0-9a-f]{8}\.png: background write failed: could not "
                                                r"encode png image \(RuntimeError: encoder exploded\)"):
        bw.flush()


def test_bad_image_is_refused_before_anything_is_handed_over(tmp_path):
    bad = make_item(5)
    bad.image = np.zeros((4, 4, 2), np.float32)
    bw = background.for_dataset(tmp_path / "ds")
    with bw.open() as w, pytest.raises(ValueError, match=r"item 1 \(label 'tea cup', index 5\).*shape \(4, 4, 2\)"):
        bw.submit(w, [make_item(1), bad])
    assert bw.handed_over_count() == 0 and bw.batches_handed_over == 0


def test_finalize_and_readers_see_handed_over_items(tmp_path):
    gate = threading.Event()

    def held(*args):
        gate.wait()
        encode_image(*args)

    def streamed(indices):
        items = make_items(indices)
        for it in items:
            it.metadata = dict(it.metadata, stream="s")
        return items

    ds = tmp_path / "ds"
    bw = background.for_dataset(ds, encode=held)
    with bw.open() as w:
        bw.submit(w, streamed(range(3)))
    before = history_fingerprint(ds)
    with bw.open() as w:
        bw.submit(w, streamed(range(3, 9)))
    assert history_fingerprint(ds) != before   # a hand-over changes the marker before the manifest does
    assert live_records(ds) == [] and len(live_records(ds, with_handed_over=True)) == 9
    # resume planning counts items on their way as stored: never planned twice
    key = StreamKey("s", 0, "generated")
    labels = ("cat", "dog", "tea cup")
    picked = claim_missing_indices(ds, lambda i: labels[i % 3], 0, 3, targets={}, stream_key=key, pack_hash="ph1")
    assert picked == [9, 10, 11]
    timer = threading.Timer(0.05, gate.set)
    timer.start()
    report = finalize(ds, echo=False)          # flushes first: all 9 items are in the report
    timer.join()
    assert sum(c["accepted"] + c["rejected"] for c in report.per_class.values()) == 9
    assert len(check_consistent(ds)) == 9 and bw.handed_over_count() == 0


def test_interrupted_while_waiting_for_a_slot_hands_nothing_over(tmp_path):
    gate, started = threading.Event(), threading.Event()

    def held(*args):
        started.set()
        gate.wait()
        encode_image(*args)

    class Cancelled(Exception):
        pass

    def cancel():
        raise Cancelled()

    bw = background.for_dataset(tmp_path / "ds", max_batches=1, encode=held)
    with bw.open() as w:
        bw.submit(w, make_items(range(0, 2)))       # being written (held)
        started.wait()
        bw.submit(w, make_items(range(2, 4)))       # waiting in the queue
        with pytest.raises(Cancelled):
            bw.submit(w, make_items(range(4, 6)), interrupted=cancel)   # the queue is full: cancelled
    assert bw.handed_over_count() == 4 and bw.backlog() == 2 and bw.batches_handed_over == 2
    with pytest.raises(Cancelled):
        bw.flush(interrupted=cancel)                # a cancelled flush leaves the queue going
    gate.set()
    bw.flush()
    assert sorted(r["index"] for r in check_consistent(tmp_path / "ds").values()) == [0, 1, 2, 3]
    with bw.open() as w:
        res = bw.submit(w, make_items(range(6)))
    bw.flush()
    assert sum(res.written.values()) == 2 and len(check_consistent(tmp_path / "ds")) == 6


def test_sync_write_beside_the_queue_never_duplicates(tmp_path):
    """Another writer (a driver calling ``DatasetWriter.write``) stores an id that is queued: the
    worker skips it under the lock instead of replacing the stored file."""
    gate = threading.Event()

    def held(*args):
        gate.wait()
        encode_image(*args)

    ds = tmp_path / "ds"
    bw = background.for_dataset(ds, encode=held)
    with bw.open() as w:
        bw.submit(w, make_items(range(4), size=16))
    with DatasetWriter(ds) as other:
        other.write(make_items(range(2, 6), size=16))
    gate.set()
    bw.flush()
    view = check_consistent(ds)
    assert sorted(r["index"] for r in view.values()) == list(range(6))
    for rec in view.values():
        with Image.open(ds / rec["file"]) as im:
            im.load()
        assert (ds / rec["file"]).stat().st_size == rec["bytes"]


def test_flush_all_at_exit_and_for_dataset_is_one_per_folder(tmp_path):
    a = background.for_dataset(tmp_path / "ds")
    assert background.for_dataset(tmp_path / "x" / ".." / "ds") is a
    with pytest.raises(ValueError, match="already open"):
        background.for_dataset(tmp_path / "ds", max_batches=5)
    with a.open() as w:
        a.submit(w, make_items(range(3)))
    background.flush_all()
    assert len(check_consistent(tmp_path / "ds")) == 3


def test_two_processes_never_overfill_a_quota(tmp_path):
    """Two writers of one dataset that do not see each other's queue (two ComfyUI processes) both
    plan the last places of a class: the worker checks the quota again under the dataset lock."""
    gate = threading.Event()

    def held(*args):
        gate.wait()
        encode_image(*args)

    ds = tmp_path / "ds"
    quotas = {"cat": 2, "dog": 2, "tea cup": 2}
    a = background.BackgroundWriter(ds, encode=held)      # as if in two processes: not in the registry
    b = background.BackgroundWriter(ds, encode=held)
    try:
        with a.open(quotas=quotas) as w:
            ra = a.submit(w, make_items(range(0, 6), accepted=True))
        with b.open(quotas=quotas) as w:
            rb = b.submit(w, make_items(range(6, 12), accepted=True))
        assert ra.written["accepted"] == rb.written["accepted"] == 6   # each saw a dataset with room
        gate.set()
        a.flush(), b.flush()
    finally:
        a.close(), b.close()
    view = check_consistent(ds)
    assert {label: sum(1 for r in view.values() if r["label"] == label) for label in quotas} == quotas


def test_a_big_batch_is_stored_a_chunk_at_a_time(tmp_path):
    """A failure in the second chunk of a batch keeps the first chunk (committed before it)."""
    calls = [0]

    def sink(f, data):
        calls[0] += 1
        if calls[0] == background.CHUNK + 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write(data)

    ds = tmp_path / "ds"
    bw = background.for_dataset(ds, sink=sink)
    with bw.open() as w:
        bw.submit(w, make_items(range(2 * background.CHUNK)))
    with pytest.raises(DatasetWriteError, match=rf"{background.CHUNK - 1} handed-over item\(s\) were not stored"):
        bw.flush()
    with DatasetWriter(ds):
        pass
    assert sorted(r["index"] for r in check_consistent(ds).values()) == list(range(background.CHUNK + 1))
