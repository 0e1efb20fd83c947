"""A dataset written by DTGen 0.2.0 still loads and resumes with the current code.

tests/fixtures/dataset_0_2_0/ was written by the 0.2.0 code itself (commit 824fa52, see
tools/make_0_2_0_fixture.py): 7 sampler items of one stream (pack ``compat``, mode balanced, base
seed 7, classes cat/dog/tea_cup), indices 0..5 in 0.2.0's shape (4 and 5 rejected) and index 6 in
the 0.1.0 shape (no stream). Its records have no ``bytes`` field; its ``.clean`` stamp names the
manifest inode of the machine that made it, so every copy must be reconciled on open. Each test
works on a copy in tmp_path; the fixture itself is never touched.
"""
import importlib.util
import json
import shutil

import numpy as np
import pytest
from dtgen.nodes.common.identity import StreamKey, item_id, stream_id
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.curation.finalize import finalize, parse_split, split_of
from dtgen.nodes.curation.quotas import counts, done_indices, next_missing_indices
from dtgen.nodes.prompting.pack import parse_pack
from dtgen.nodes.prompting.sampler import Sampler
from dtgen.nodes.store.clean_marker import is_clean
from dtgen.nodes.store.lock import DatasetLock
from dtgen.nodes.store.reader import load_history, load_history_embeddings
from dtgen.nodes.store.reconcile import ensure_consistent, reconcile
from dtgen.nodes.store.writer import DatasetWriter

from support.datasets import check_consistent
from support.pkg import ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "dataset_0_2_0"
PACK_HASH = "d6d28c9e37ed6c10e7339a5cd102e512"
STREAM = "7ef1588ef5f64e43"
BASE_SEED, MODE = 7, "balanced"
LABELS = ("cat", "dog", "tea_cup")
ACCEPTED = {"cat": {0, 3, 6}, "dog": {1}, "tea_cup": {2}}
REJECTED = {"dog": {4}, "tea_cup": {5}}
ALL_INDICES = set(range(7))
LEGACY_INDEX = 6
COUNTS = {"cat": {"accepted": 3, "rejected": 0}, "dog": {"accepted": 1, "rejected": 1},
          "tea_cup": {"accepted": 1, "rejected": 1}}
FILES = {  # every file of the fixture (no .lock)
    ".clean", "dataset.json", "manifest.jsonl", "embeddings/f32x4.bin", "images/metadata.jsonl",
    "images/cat/000000_421a2b5a.png", "images/cat/000003_ff3654ff.png", "images/cat/000006_6028ae40.png",
    "images/dog/000001_08e80380.png", "images/tea_cup/000002_90c02357.png",
    "rejected/dog/000004_8459defd.png", "rejected/tea_cup/000005_2973960e.png",
}


def _tool():
    spec = importlib.util.spec_from_file_location("make_0_2_0_fixture", ROOT / "tools" / "make_0_2_0_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sampler():
    """The current sampler on the pack the fixture was made from."""
    return Sampler(parse_pack(_tool().PACK_YAML), MODE, BASE_SEED, list(LABELS))


@pytest.fixture
def ds(tmp_path):
    dest = tmp_path / "dataset_0_2_0"
    shutil.copytree(FIXTURE, dest)
    return dest


def _records(path):
    return [json.loads(line) for line in (path / "manifest.jsonl").read_text().splitlines()]


def _item(sampler, i: int, accepted: bool, stream: bool = True) -> ScoredItem:
    """Sampler item ``i`` as the filter hands it to the writer (new pixels: identity is stream + index)."""
    p = sampler.item(i)
    meta = dict(p.metadata) if stream else {k: v for k, v in p.metadata.items() if k != "stream"}
    rng = np.random.default_rng(100 + i)
    return ScoredItem(image=rng.random((8, 8, 3), dtype=np.float32), label=p.label, prompt=p.positive,
                      negative=p.negative, seed=p.seed, index=i, metadata=meta, score=0.3 if accepted else 0.1,
                      threshold=0.25, method="mean_std", accepted=accepted,
                      reason="ok" if accepted else "below_threshold",
                      embedding=rng.standard_normal(4).astype(np.float32))


def _was_accepted(i: int) -> bool:
    return any(i in s for s in ACCEPTED.values())


def test_the_fixture_is_what_0_2_0_wrote():
    files = {str(p.relative_to(FIXTURE)) for p in FIXTURE.rglob("*") if p.is_file()}
    assert files == FILES
    marker = json.loads((FIXTURE / "dataset.json").read_text())
    assert (marker["format"], marker["format_version"]) == ("dtgen-dataset", 1)
    recs = _records(FIXTURE)
    assert len(recs) == 7 and all(r["event"] == "write" and "bytes" not in r for r in recs)
    assert {r["index"]: r["stream"] for r in recs} == {**{i: STREAM for i in range(6)}, LEGACY_INDEX: None}
    assert {r["pack_hash"] for r in recs} == {PACK_HASH}
    legacy = next(r for r in recs if r["index"] == LEGACY_INDEX)
    assert "stream" not in legacy["metadata"]
    assert (legacy["metadata"]["base_seed"], legacy["metadata"]["mode"]) == (BASE_SEED, MODE)
    assert (FIXTURE / "embeddings" / "f32x4.bin").stat().st_size == 7 * (16 + 4 * 4)


def test_open_reconciles_once_and_moves_nothing(ds):
    manifest_before = (ds / "manifest.jsonl").read_bytes()
    assert not is_clean(ds)   # the stamp names another copy's manifest inode
    report = ensure_consistent(ds)
    assert report is not None, "a copied 0.2.0 dataset must be reconciled, not trusted"
    assert not report.changed
    assert (report.orphans, report.damaged, report.dropped, report.recovered) == ([], [], [], [])
    assert report.backup is None and report.corrupt_lines == 0
    assert not (ds / "orphans").exists()
    assert (ds / "manifest.jsonl").read_bytes() == manifest_before   # no rewrite
    assert is_clean(ds) and ensure_consistent(ds) is None            # now stamped: O(1) opens

    view = check_consistent(ds)
    assert {r["id"]: r["file"] for r in view.values()} == {r["id"]: r["file"] for r in _records(FIXTURE)}
    assert all("bytes" not in r for r in view.values())   # no recorded size: not a damage sign
    rows = [json.loads(x) for x in (ds / "images" / "metadata.jsonl").read_text().splitlines()]
    assert {r["label"] for r in rows} == set(ACCEPTED)
    assert sorted((r["label"], r["index"]) for r in rows) == sorted(
        (label, i) for label, idx in ACCEPTED.items() for i in idx)

    # the CLI's --verify check decodes every 0.2.0 image
    with DatasetLock(ds):
        verified = reconcile(ds, verify=True)
    assert not verified.changed and verified.damaged == []


def test_class_counts_match_the_manifest(ds):
    ensure_consistent(ds)
    assert counts(ds) == COUNTS
    from_lines = {}
    for r in _records(FIXTURE):
        c = from_lines.setdefault(r["label"], {"accepted": 0, "rejected": 0})
        c[r["decision"]] += 1
    assert counts(ds) == from_lines
    for label in LABELS:
        accepted = {int(p.name[:6]) for p in (ds / "images" / label).glob("*.png")}
        rejected = {int(p.name[:6]) for p in (ds / "rejected" / label).glob("*.png")}
        assert (accepted, rejected) == (ACCEPTED.get(label, set()), REJECTED.get(label, set()))


def test_history_reads_0_2_0_scores_and_embeddings(ds):
    """What the filter's history (thresholds, near-duplicate check) takes from a 0.2.0 dataset."""
    ensure_consistent(ds)
    recs = _records(FIXTURE)
    scores = load_history(ds)
    assert {k: sorted(v.tolist()) for k, v in scores.items()} == {
        label: sorted(np.float32(r["score"]).item() for r in recs if r["label"] == label) for label in LABELS}
    accepted = load_history_embeddings(ds)
    assert {k: v.shape for k, v in accepted.items()} == {label: (len(idx), 4) for label, idx in ACCEPTED.items()}
    every = load_history_embeddings(ds, "all")
    assert {k: v.shape[0] for k, v in every.items()} == {k: c["accepted"] + c["rejected"] for k, c in COUNTS.items()}
    for vecs in every.values():   # the fixture's vectors: components +-0.5, unit length
        assert np.all(np.abs(vecs) == 0.5) and np.allclose(np.linalg.norm(vecs, axis=1), 1.0)


@pytest.mark.parametrize("opened", [False, True], ids=["as_written", "after_open"])
def test_loaders_read_images(ds, opened, tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    if opened:
        ensure_consistent(ds)   # metadata.jsonl rebuilt by the current code
    folder = torchvision.datasets.ImageFolder(str(ds / "images"))
    assert folder.classes == list(LABELS)
    per_class = {c: 0 for c in folder.classes}
    for path, target in folder.samples:
        assert "/rejected/" not in path
        per_class[folder.classes[target]] += 1
    assert per_class == {label: len(idx) for label, idx in ACCEPTED.items()}
    image, target = folder[0]
    assert image.size == (8, 8) and folder.classes[target] == "cat"

    train = datasets.load_dataset("imagefolder", data_dir=str(ds / "images"), split="train",
                                  cache_dir=str(tmp_path / "hf"))
    assert train.num_rows == 5
    assert sorted(zip(train["label"], train["index"])) == sorted(
        (label, i) for label, idx in ACCEPTED.items() for i in idx)
    encoded = train.class_encode_column("label")
    assert encoded.features["label"].names == folder.classes   # same class order as torchvision
    assert train[0]["image"].size == (8, 8)


def test_done_indices_and_the_next_ones(ds, sampler):
    # the stream id rule and the pack hash are unchanged since 0.2.0: resume finds the same stream
    assert sampler.pack.pack_hash == PACK_HASH
    assert stream_id(PACK_HASH, MODE, BASE_SEED, LABELS) == STREAM == sampler.stream
    key = StreamKey(STREAM, BASE_SEED, MODE)
    assert tuple(sampler.stream_key) == tuple(key)
    assert done_indices(ds, PACK_HASH, key) == ALL_INDICES      # the 0.1.0 record by base seed + mode
    assert done_indices(ds) == ALL_INDICES
    assert done_indices(ds, "0" * 32, key) == set()               # another pack
    other_seed = StreamKey(stream_id(PACK_HASH, MODE, 8, LABELS), 8, MODE)
    assert done_indices(ds, PACK_HASH, other_seed) == set()       # a new seed is a new stream
    other_classes = StreamKey(stream_id(PACK_HASH, MODE, BASE_SEED, LABELS[:2]), BASE_SEED, MODE)
    assert done_indices(ds, PACK_HASH, other_classes) == {LEGACY_INDEX}   # 0.1.0 kept no class subset
    assert next_missing_indices(ds, sampler.label_of, 0, 4, pack_hash=PACK_HASH, stream_key=key) == [7, 8, 9, 10]
    # with targets: cat has 3 of 4, dog 1 of 2, tea_cup 1 of 1
    picked = next_missing_indices(ds, sampler.label_of, 0, 5, {"cat": 4, "dog": 2, "tea_cup": 1},
                                  pack_hash=PACK_HASH, stream_key=key)
    assert picked == [7, 9] and [sampler.label_of(i) for i in picked] == ["dog", "cat"]


def test_current_sampler_items_are_the_stored_ones(sampler):
    """What the current sampler makes for these indices is what 0.2.0 stored (same id, prompt, seed)."""
    for rec in _records(FIXTURE):
        i = rec["index"]
        item = _item(sampler, i, rec["decision"] == "accepted", stream=i != LEGACY_INDEX)
        assert (item.label, item.prompt, item.seed) == (rec["label"], rec["prompt"], rec["seed"])
        assert item_id(item) == rec["id"]
        expected = dict(item.metadata)
        assert rec["metadata"] == expected


def test_resume_skips_stored_items_and_appends_new_ones(ds, sampler):
    ids_before = {r["id"] for r in _records(FIXTURE)}
    again = [_item(sampler, i, _was_accepted(i)) for i in sorted(ALL_INDICES)]   # all with a stream now
    with DatasetWriter(ds) as w:
        assert not w.reconciled.changed
        assert w.status() == {label: dict(c, target=None, missing=None) for label, c in COUNTS.items()}
        result = w.write(again)
        assert result.written == {"accepted": 0, "rejected": 0}
        assert result.skipped_duplicate == {"accepted": 5, "rejected": 2}   # index 6 too (0.1.0 record)
        # the 0.1.0-shaped item itself (no stream) is the same id
        legacy = w.write([_item(sampler, LEGACY_INDEX, True, stream=False)])
        assert legacy.written == {"accepted": 0, "rejected": 0} and legacy.skipped_duplicate["accepted"] == 1
        new = w.write([_item(sampler, 7, True), _item(sampler, 8, True), _item(sampler, 9, False)])
    assert new.written == {"accepted": 2, "rejected": 1} and sum(new.skipped_duplicate.values()) == 0
    assert sorted(p.relative_to(ds).as_posix()[:-13] for p in new.paths) == [
        "images/dog/000007", "images/tea_cup/000008", "rejected/cat/000009"]

    view = check_consistent(ds)
    assert len(view) == 10 and ids_before <= set(view)
    assert all("bytes" not in r for r in view.values() if r["id"] in ids_before)
    assert all(r["bytes"] == (ds / r["file"]).stat().st_size for r in view.values() if r["id"] not in ids_before)
    key = StreamKey(STREAM, BASE_SEED, MODE)
    assert done_indices(ds, PACK_HASH, key) == set(range(10))
    assert counts(ds) == {"cat": {"accepted": 3, "rejected": 1}, "dog": {"accepted": 2, "rejected": 1},
                          "tea_cup": {"accepted": 2, "rejected": 1}}
    assert (ds / "embeddings" / "f32x4.bin").stat().st_size == 10 * (16 + 4 * 4)
    assert not (ds / "orphans").exists()
    # the next open trusts the stamp the current writer left
    assert is_clean(ds) and ensure_consistent(ds) is None


def test_finalize_with_a_split(ds, sampler, capsys):
    fractions = parse_split("0.5,0.5")
    result = finalize(ds, split="0.5,0.5")
    assert "tea_cup" in capsys.readouterr().out
    assert result.reconciled is not None and not result.reconciled.changed
    assert {k: {"accepted": v["accepted"], "rejected": v["rejected"]} for k, v in result.per_class.items()} == COUNTS
    assert result.per_class["dog"]["total"] == 2 and result.per_class["cat"]["acceptance_rate"] == 1.0
    assert result.moved == {"to_accepted": 0, "to_rejected": 0}
    recs = {r["id"]: r for r in _records(FIXTURE)}
    expected = {}
    for rid, r in recs.items():
        if r["decision"] == "accepted":
            expected[split_of(rid, fractions)] = expected.get(split_of(rid, fractions), 0) + 1
    assert result.split == expected and sum(result.split.values()) == 5

    view = check_consistent(ds)
    assert set(view) == set(recs)
    assert {rid: r["split"] for rid, r in view.items()} == {rid: split_of(rid, fractions) for rid in recs}
    assert {rid: r["decision"] for rid, r in view.items()} == {rid: r["decision"] for rid, r in recs.items()}
    rows = [json.loads(x) for x in (ds / "images" / "metadata.jsonl").read_text().splitlines()]
    assert {r["id"]: r["split"] for r in rows} == {rid: split_of(rid, fractions) for rid, r in recs.items()
                                                    if r["decision"] == "accepted"}
    data = json.loads((ds / "report" / "report.json").read_text())
    assert data["split"]["accepted_counts"] == expected
    assert {k: v["accepted"] for k, v in data["per_class"].items()} == {k: v["accepted"] for k, v in COUNTS.items()}
    assert set(result.contact_sheets) == set(LABELS) and all(p.is_file() for p in result.contact_sheets.values())
    assert list(ds.glob("manifest.jsonl.bak-*"))   # the 0.2.0 manifest kept beside the compacted one
    assert not (ds / "orphans").exists()

    # and resuming after finalize still knows every item, the 0.1.0 one included
    assert done_indices(ds, PACK_HASH, StreamKey(STREAM, BASE_SEED, MODE)) == ALL_INDICES
    with DatasetWriter(ds) as w:
        again = w.write([_item(sampler, i, _was_accepted(i)) for i in sorted(ALL_INDICES)])
    assert again.written == {"accepted": 0, "rejected": 0} and sum(again.skipped_duplicate.values()) == 7
