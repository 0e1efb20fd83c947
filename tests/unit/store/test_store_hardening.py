"""The dataset folder is a tree the writer owns: no symlinks, repaired by any reader after a crash at
any step of the write protocol, damaged images noticed, several planners never plan the same item."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from dtgen.nodes.common.identity import StreamKey
from dtgen.nodes.curation import claims as claims_mod
from dtgen.nodes.store.reader import history_fingerprint
from dtgen.nodes.store.layout import DatasetSymlinkError
from dtgen.nodes.store.lock import DatasetLock
from dtgen.nodes.store.paths import DatasetPathError, safe_dataset_dir, safe_label
from dtgen.nodes.store.reconcile import ensure_consistent, reconcile
from dtgen.nodes.store.writer import DatasetWriter
from support.pkg import BOOTSTRAP

from support.datasets import check_consistent, make_items

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _written(ds, n=3):
    with DatasetWriter(ds) as w:
        w.write(make_items(range(n)))


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --- symlinks --------------------------------------------------------------------------------

# (what is replaced by a symlink, whether the target is a folder)
LINKED = [("images/cat", True), ("images", True), ("rejected", True), ("embeddings", True), ("orphans", True),
          ("images/metadata.jsonl", False), ("manifest.jsonl", False), ("embeddings/f32x4.bin", False),
          ("claims.json", False), ("report", True)]


@pytest.mark.parametrize("rel,is_dir", LINKED, ids=[r for r, _ in LINKED])
def test_a_symlink_inside_the_dataset_is_refused_and_nothing_is_written_through_it(tmp_path, rel, is_dir):
    ds, outside = tmp_path / "out" / "ds", tmp_path / "outside"
    _written(ds)
    (ds / "orphans").mkdir(exist_ok=True)
    (ds / "report").mkdir(exist_ok=True)
    outside.mkdir()
    target = outside / "target"
    if is_dir:
        target.mkdir()
    else:
        target.write_bytes(b"someone else's file\n")
    before = _tree(outside)
    link = ds / rel
    if link.exists():
        os.rename(link, tmp_path / "moved-away")
    link.symlink_to(target, target_is_directory=is_dir)

    with pytest.raises(DatasetSymlinkError) as info:
        with DatasetWriter(ds) as w:
            w.write(make_items(range(3, 9)))
    assert rel in str(info.value) and "symlink" in str(info.value)
    with pytest.raises(DatasetSymlinkError):   # every reader refuses it too
        ensure_consistent(ds)
    with pytest.raises(DatasetSymlinkError):
        with DatasetLock(ds):
            reconcile(ds)
    assert _tree(outside) == before
    if not is_dir:
        assert target.read_bytes() == b"someone else's file\n"
    assert not list(ds.glob("manifest.jsonl.bak-*")) and not list(ds.glob("manifest.jsonl.corrupt-*"))


def test_a_symlinked_image_file_is_moved_aside_not_followed(tmp_path):
    """A recorded image replaced by a link: reconcile moves the link itself; the target is untouched."""
    ds, outside = tmp_path / "ds", tmp_path / "outside.png"
    outside.write_bytes(b"not ours")
    _written(ds, 4)
    victim = sorted((ds / "images").rglob("*.png"))[0]
    victim.unlink()
    victim.symlink_to(outside)
    with DatasetLock(ds):
        report = reconcile(ds)
    assert len(report.damaged) == 1
    moved = [p for p in (ds / "orphans").rglob("*.png") if p.is_symlink()]
    assert len(moved) == 1 and outside.read_bytes() == b"not ours"
    check_consistent(ds)


# --- crash at every step boundary of the write protocol ------------------------------------------

# The writer's durable steps in order, and where each is looked up (patched in the child only).
STEPS = ["mark_dirty", "write_atomic", "fsync_dir", "embeddings.append", "manifest.append", "metadata.append",
         "mark_clean"]

CHILD = """
import os, sys
from pathlib import Path
from dtgen.nodes.store import writer as W, embeddings, manifest, metadata
sys.path.insert(0, {tests!r})
from support.datasets import make_items
ds, step, when = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
owner, _, name = step.rpartition(".")
owner = {{"": W, "embeddings": embeddings, "manifest": manifest, "metadata": metadata}}[owner]
real = getattr(owner, name)
calls = [0]
def killed(*args, **kwargs):
    calls[0] += 1
    if calls[0] == 2 or name != "write_atomic":   # write_atomic: die at the second image
        if when == "before":
            os._exit(9)
        result = real(*args, **kwargs)
        os._exit(9)
    return real(*args, **kwargs)
with W.DatasetWriter(ds) as w:
    w.write(make_items(range(0, 4)))
    setattr(owner, name, killed)
    w.write(make_items(range(4, 8)))
print("not killed", flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX")
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", STEPS)
def test_kill_at_every_step_boundary_is_repaired_by_any_reader(tmp_path, step, when):
    ds = tmp_path / "ds"
    code = BOOTSTRAP + CHILD.format(tests=TESTS_DIR)
    proc = subprocess.run([sys.executable, "-c", code, str(ds), step, when], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 9, proc.stdout + proc.stderr     # it really died at that step
    # no writer runs again: a reader (resume mode, the filter's history, the CLI) repairs on open
    ensure_consistent(ds)
    view = check_consistent(ds)
    indices = sorted(r["index"] for r in view.values())
    assert indices[:4] == [0, 1, 2, 3]
    # and the dataset resumes: every item exactly once
    with DatasetWriter(ds) as w:
        w.write(make_items(range(8)))
    assert sorted(r["index"] for r in check_consistent(ds).values()) == list(range(8))


def test_metadata_lost_after_the_manifest_commit_is_rebuilt_by_a_reader(tmp_path):
    """The state a kill between the manifest commit and the metadata append leaves (no .clean)."""
    ds = tmp_path / "ds"
    _written(ds, 8)
    (ds / "images" / "metadata.jsonl").write_bytes(b"")
    (ds / ".clean").unlink()
    report = ensure_consistent(ds)
    assert report is not None
    rows = (ds / "images" / "metadata.jsonl").read_text().splitlines()
    assert len(rows) == sum(1 for r in check_consistent(ds).values() if r["decision"] == "accepted") > 0
    assert ensure_consistent(ds) is None     # clean again: O(1) from now on


# --- damaged images ----------------------------------------------------------------------------

def test_a_truncated_image_is_noticed_kept_aside_and_made_again(tmp_path):
    ds = tmp_path / "ds"
    _written(ds, 4)
    victim = sorted((ds / "images").rglob("*.png"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with DatasetLock(ds):
        report = reconcile(ds)
    assert len(report.damaged) == 1 and "bytes" in report.damaged[0]
    kept = list((ds / "orphans" / "damaged").rglob("*.png"))
    assert [p.read_bytes() for p in kept] == [data[: len(data) // 2]]      # nothing deleted
    check_consistent(ds)
    with DatasetWriter(ds) as w:
        result = w.write(make_items(range(4)))
    assert sum(result.written.values()) == 1                            # the damaged item again


def test_verify_decodes_images_written_before_sizes_were_recorded(tmp_path):
    ds = tmp_path / "ds"
    _written(ds, 4)
    lines = [json.loads(x) for x in (ds / "manifest.jsonl").read_text().splitlines()]
    for rec in lines:
        rec.pop("bytes")                                                # as 0.2.0 wrote them
    (ds / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    victim = ds / [r for r in lines if r["decision"] == "accepted"][0]["file"]
    victim.write_bytes(victim.read_bytes()[:60])
    with DatasetLock(ds):
        assert reconcile(ds).damaged == []                              # no size to compare
        report = reconcile(ds, verify=True)
    assert len(report.damaged) == 1 and "does not decode" in report.damaged[0]


# --- names -------------------------------------------------------------------------------------

@pytest.mark.parametrize("label", ["metadata.jsonl", "Metadata.JSONL", "manifest.jsonl", "dataset.json",
                                   "metadata.csv"])
def test_layout_file_names_cannot_be_labels(label):
    with pytest.raises(DatasetPathError, match="file name the dataset layout uses"):
        safe_label(label)


def test_every_name_the_layout_uses_is_reserved():
    from dtgen.nodes.common.labels import RESERVED_LABELS
    from dtgen.nodes.store import layout

    assert {layout.MARKER, layout.MANIFEST, layout.METADATA, layout.CLAIMS} <= RESERVED_LABELS


def test_a_dataset_name_too_long_for_the_file_system_is_refused(tmp_path):
    name = "/".join(["x" * 100] * 50)
    with pytest.raises(DatasetPathError, match="limit is 200"):
        safe_dataset_dir(tmp_path, name)


def test_case_collision_names_the_folder_on_disk(tmp_path):
    ds = tmp_path / "ds"
    with DatasetWriter(ds) as w:
        w.write(make_items([1], labels=("Cat",)))
    with pytest.raises(DatasetPathError) as info:
        with DatasetWriter(ds) as w:
            w.write(make_items([2], labels=("cat",)))
    assert "folder 'Cat'" in str(info.value) and "case-insensitive" in str(info.value)


def test_error_types_read_dtgen_dot_name():
    assert DatasetSymlinkError.__module__ == DatasetPathError.__module__ == "dtgen"


def test_the_fingerprint_changes_when_the_folder_is_deleted(tmp_path):
    import shutil

    ds = tmp_path / "ds"
    _written(ds)
    before = history_fingerprint(ds)
    shutil.rmtree(ds)
    assert history_fingerprint(ds) != before


# --- claims: several planners on one dataset ---------------------------------------------------

def _plan(ds, owner, monkeypatch, count=4, quota=10, now=1000.0):
    monkeypatch.setattr(claims_mod, "_OWNER", owner)
    labels = ("cat", "dog")
    return claims_mod.claim_missing_indices(ds, lambda i: labels[i % 2], 0, count, {"cat": quota, "dog": quota},
                                            stream_key=StreamKey("s1", 0, "balanced"), pack_hash="ph1", now=now)


def test_two_planners_never_plan_the_same_items(tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    alive = f"{claims_mod._HOST}:{os.getpid()}"
    a = _plan(ds, alive + ":a", monkeypatch)
    b = _plan(ds, alive + ":b", monkeypatch)
    assert a == [0, 1, 2, 3] and b == [4, 5, 6, 7]


def test_claims_count_toward_the_quota(tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    alive = f"{claims_mod._HOST}:{os.getpid()}"
    assert _plan(ds, alive + ":a", monkeypatch, count=10, quota=2) == [0, 1, 2, 3]
    assert _plan(ds, alive + ":b", monkeypatch, count=10, quota=2) == []   # both classes in flight


def test_claims_end_with_their_process_their_ttl_or_the_next_plan_of_the_same_process(tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    alive = f"{claims_mod._HOST}:{os.getpid()}"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert _plan(ds, f"{claims_mod._HOST}:{dead.pid}:x", monkeypatch) == [0, 1, 2, 3]
    assert _plan(ds, alive + ":a", monkeypatch) == [0, 1, 2, 3]             # the dead server's claims end
    assert _plan(ds, alive + ":a", monkeypatch) == [0, 1, 2, 3]             # its own earlier prompt ended
    assert _plan(ds, "otherhost:1:z", monkeypatch) == [4, 5, 6, 7]
    later = 1000.0 + claims_mod.CLAIM_TTL_S + 1
    assert _plan(ds, alive + ":b", monkeypatch, now=later) == [0, 1, 2, 3]  # all expired by then


def test_stored_items_end_their_claims(tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    alive = f"{claims_mod._HOST}:{os.getpid()}"
    _plan(ds, alive + ":a", monkeypatch, count=2)
    items = make_items([0, 1], labels=("cat", "dog"))
    for it in items:
        it.metadata["stream"] = "s1"
    with DatasetWriter(ds) as w:
        w.write(items)
    assert claims_mod.load(ds) and _plan(ds, alive + ":b", monkeypatch, count=2) == [2, 3]
    assert sorted(c["index"] for c in claims_mod.load(ds)) == [2, 3]


def test_writers_opening_a_new_dataset_at_once_all_succeed(tmp_path):
    """Several writers (threads or servers) creating the same new dataset: the one that loses the
    race sees the winner's marker, never 'folder is not empty and has no dataset.json'."""
    import threading

    from dtgen.nodes.store import layout

    for round_ in range(20):
        ds = tmp_path / f"ds{round_}"
        errors, barrier = [], threading.Barrier(4)

        def write(start):
            barrier.wait()
            try:
                with DatasetWriter(ds) as w:
                    w.write(make_items(range(start, start + 2)))
            except Exception as exc:   # noqa: BLE001 - any failure fails the test below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(2 * k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == [], errors
        assert layout.read_marker(ds)["format"] == layout.FORMAT
        assert sorted(r["index"] for r in check_consistent(ds).values()) == list(range(8))


def test_another_servers_stored_items_end_its_claims(tmp_path, monkeypatch):
    """Server A (seed 1) plans and stores 2 items; server B (another stream) must not count A's
    stored items a second time as in flight."""
    alive = f"{claims_mod._HOST}:{os.getpid()}"
    monkeypatch.setattr(claims_mod, "_OWNER", alive + ":a")
    labels = ("cat", "dog")
    a_key = StreamKey("sA", 1, "balanced")
    picked = claims_mod.claim_missing_indices(tmp_path / "ds", lambda i: labels[i % 2], 0, 2, {"cat": 2, "dog": 2},
                                              stream_key=a_key, pack_hash="ph1", now=1000.0)
    items = make_items(picked, labels=labels, accepted=True)
    for it in items:
        it.metadata["stream"] = "sA"
    with DatasetWriter(tmp_path / "ds") as w:
        w.write(items)
    monkeypatch.setattr(claims_mod, "_OWNER", alive + ":b")
    b = claims_mod.claim_missing_indices(tmp_path / "ds", lambda i: labels[i % 2], 0, 4, {"cat": 2, "dog": 2},
                                         stream_key=StreamKey("sB", 2, "balanced"), pack_hash="ph1", now=1001.0)
    assert [labels[i % 2] for i in b] == ["cat", "dog"]     # one more of each, not nothing


def test_a_damaged_claims_file_counts_as_no_claims(tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    _plan(ds, "x:1:a", monkeypatch)
    (ds / "claims.json").write_text('{"claims": [{"stream": "s1", "index": [1], "label": "cat", "until": "soon", '
                                    '"owner": "h:99999999999999999999999:z"}]}')
    assert claims_mod.load(ds) == []
    assert _plan(ds, f"{claims_mod._HOST}:{os.getpid()}:b", monkeypatch) == [0, 1, 2, 3]


def test_a_full_class_does_not_make_the_planner_scan_everything(tmp_path):
    from dtgen.nodes.curation.quotas import next_missing_indices

    calls = []

    def label_of(i):
        calls.append(i)
        return "ab"[i % 2]

    assert next_missing_indices(tmp_path / "none", label_of, 0, 2, {"a": 2, "b": 0}, max_scan=1_000_000) == [0, 2]
    assert len(calls) < 10
    assert next_missing_indices(tmp_path / "none", label_of, 0, 2, {"a": 0, "b": 0}, max_scan=1_000_000) == []
