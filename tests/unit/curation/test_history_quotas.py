import numpy as np
from dtgen.nodes.store.reader import history_fingerprint, load_history, load_history_embeddings
from dtgen.nodes.common.identity import StreamKey
from dtgen.nodes.curation.quotas import done_indices, missing, next_missing_indices
from dtgen.nodes.store.writer import DatasetWriter

from support.datasets import make_items


def test_history_scores_embeddings_fingerprint(tmp_path):
    ds = tmp_path / "ds"
    items = make_items(range(9))
    with DatasetWriter(ds) as w:
        w.write(items[:6])
        fp = history_fingerprint(ds)
        w.write(items[6:])
    assert history_fingerprint(ds) != fp
    hist = load_history(ds)
    assert np.allclose(sorted(hist["cat"]), sorted(it.score for it in items if it.label == "cat"))
    acc = load_history(ds, which="accepted")
    assert len(acc["cat"]) == sum(it.accepted for it in items if it.label == "cat")
    emb = load_history_embeddings(ds)
    want = np.stack([it.embedding for it in items if it.label == "dog" and it.accepted])
    assert emb["dog"].dtype == np.float32 and np.array_equal(emb["dog"], want)
    assert load_history_embeddings(ds, which="all")["cat"].shape == (3, 4)
    # a half-written last line (writer still appending) is ignored by readers
    with open(ds / "manifest.jsonl", "ab") as f:
        f.write(b'{"id": "x", "fi')
    assert len(load_history(ds)["cat"]) == 3


def test_missing_done_and_next_indices(tmp_path):
    ds = tmp_path / "ds"
    labels = ("a", "b")
    with DatasetWriter(ds) as w:
        w.write(make_items([0, 1, 2, 3, 5], labels=labels, accepted=True))
    # a: 0, 2 accepted; b: 1, 3, 5 accepted
    assert done_indices(ds) == {0, 1, 2, 3, 5}
    assert done_indices(ds, pack_hash="nope") == set()
    assert missing(ds, {"a": 4, "b": 3}) == {"a": 2, "b": 0}
    label_of = lambda i: labels[i % 2]
    # b is full, a needs 2: skip done 0, 2 and every b index
    assert next_missing_indices(ds, label_of, 0, 10, {"a": 4, "b": 3}) == [4, 6]
    assert next_missing_indices(ds, label_of, 0, 3, None) == [4, 6, 7]
    assert next_missing_indices(ds, label_of, 0, 5, {"a": 2, "b": 3}, max_scan=50) == []


def test_cached_live_view_follows_appends_and_rewrites(tmp_path):
    """The per-process view is read incrementally, and a rewritten manifest (even one at least as
    long as what was read) is never served from the cache."""
    from dtgen.nodes.store import manifest
    from dtgen.nodes.store.reader import live_records

    ds = tmp_path / "ds"
    ds.mkdir()
    rec = lambda i, d="accepted": {"id": f"id{i}", "label": "a", "label_dir": "a", "decision": d,  # noqa: E731
                                   "file": f"images/a/{i}.png", "score": i / 10}
    manifest.append(ds, [rec(1), rec(2)])
    assert [r["id"] for r in live_records(ds)] == ["id1", "id2"]
    manifest.append(ds, [rec(3), rec(2, "rejected")])            # appended: read incrementally
    assert {r["id"]: r["decision"] for r in live_records(ds)} == {"id1": "accepted", "id2": "rejected",
                                                                  "id3": "accepted"}
    manifest.rewrite(ds, [rec(7), rec(8), rec(9), rec(10), rec(11)])  # longer, new content
    assert [r["id"] for r in live_records(ds)] == ["id7", "id8", "id9", "id10", "id11"]
    manifest.rewrite(ds, [rec(7)])                                # shorter
    assert [r["id"] for r in live_records(ds)] == ["id7"]


def _with_stream(items, stream, base_seed=0, mode="balanced"):
    for it in items:
        it.metadata = dict(it.metadata, base_seed=base_seed, mode=mode, **({"stream": stream} if stream else {}))
    return items


S1, S2 = StreamKey("s1", 0, "balanced"), StreamKey("s2", 1, "balanced")


def test_a_new_sampler_stream_gives_new_items_not_duplicates(tmp_path):
    ds = tmp_path / "ds"
    with DatasetWriter(ds) as writer:
        first = writer.write(_with_stream(make_items(range(4)), "s1"))
        again = writer.write(_with_stream(make_items(range(4)), "s1"))
        other = writer.write(_with_stream(make_items(range(4)), "s2", base_seed=1))   # the seed changed
    assert sum(first.written.values()) == 4
    assert sum(again.written.values()) == 0 and sum(again.skipped_duplicate.values()) == 4
    assert sum(other.written.values()) == 4 and sum(other.skipped_duplicate.values()) == 0
    assert done_indices(ds, "ph1", S1) == done_indices(ds, "ph1", S2) == {0, 1, 2, 3}
    assert done_indices(ds, "ph1", StreamKey("s3", 2, "balanced")) == set()
    assert next_missing_indices(ds, lambda i: "cat", 0, 3, stream_key=StreamKey("s3", 2, "balanced")) == [0, 1, 2]


def test_records_written_before_streams_match_by_seed_and_mode(tmp_path):
    """Datasets of pack 0.1.0: records without a stream are the same items as a streamed sampler's
    when base seed and mode match (then not written twice), and other items otherwise."""
    ds = tmp_path / "ds"
    with DatasetWriter(ds) as writer:
        writer.write(_with_stream(make_items(range(3)), None))          # 0.1.0: no stream, seed 0
        same = writer.write(_with_stream(make_items(range(3)), "s1"))   # same seed and mode
        other = writer.write(_with_stream(make_items(range(3)), "s2", base_seed=1))
    assert sum(same.written.values()) == 0 and sum(same.skipped_duplicate.values()) == 3
    assert sum(other.written.values()) == 3
    assert done_indices(ds, "ph1", S1) == {0, 1, 2}
    assert done_indices(ds, "ph1", StreamKey("s9", 0, "random")) == set()


def test_a_new_stream_each_queue_still_fills_the_classes_in_turn(tmp_path):
    """The editor's seed widget randomizes on every queue: each run is a new stream whose index 0
    is the first class. Resume mode must still spread the items over the classes."""
    from dtgen.nodes.common.identity import StreamKey

    ds = tmp_path / "ds"
    labels = ("orange", "apple", "banana", "cherry", "grape")
    label_of = lambda i: labels[i % 5]   # noqa: E731  (balanced mode)
    made = []
    for run in range(8):
        key = StreamKey(f"stream{run}", run, "balanced")
        (i,) = next_missing_indices(ds, label_of, 0, 1, {lab: 1000 for lab in labels}, stream_key=key)
        item = make_items([i], labels=labels, accepted=run != 2)[0]      # one rejection on the way
        item.metadata = dict(item.metadata, stream=key.stream)
        with DatasetWriter(ds) as w:
            w.write([item])
        made.append(label_of(i))
    assert sorted(made.count(lab) for lab in labels) == [1, 1, 2, 2, 2], made
    assert made[:5] == list(labels)          # in turn, whatever was rejected


def test_a_batch_is_balanced_and_respects_quotas(tmp_path):
    ds = tmp_path / "ds"
    labels = ("a", "b", "c")
    label_of = lambda i: labels[i % 3]   # noqa: E731
    with DatasetWriter(ds) as w:
        w.write(make_items([0, 3, 6], labels=labels, accepted=True))          # a has 3 already
    picked = next_missing_indices(ds, label_of, 0, 6, {"a": 4, "b": 10, "c": 10})
    assert [label_of(i) for i in picked].count("a") <= 1
    assert sorted(label_of(i) for i in picked) == ["b", "b", "b", "c", "c", "c"]
