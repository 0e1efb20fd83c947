"""Offline refilter: a stored dataset re-decided from its stored scores, nothing re-encoded."""
from __future__ import annotations

import json

import numpy as np

from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.store.writer import DatasetWriter
from dtgen.nodes.curation.redecide import decide_fn_for
from dtgen.runner.cli import main
from dtgen.nodes.curation.thresholds import method_from


def _dataset(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for label in ("a", "b"):
        for j in range(6):
            items.append(ScoredItem(image=rng.random((8, 8, 3), dtype=np.float32), label=label,
                                    prompt=f"{label} {j}", index=len(items), metadata={"pack_hash": "h"},
                                    score=0.1 + 0.01 * j, threshold=0.0, method="fixed", accepted=True,
                                    reason="ok", embedding=rng.random(4).astype(np.float32)))
    ds = tmp_path / "ds"
    with DatasetWriter(ds) as writer:
        writer.write(items)
    return ds


def _live(ds):
    rows = [json.loads(line) for line in (ds / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return {r["id"]: r for r in rows}


def test_cli_redecides_with_another_method(tmp_path):
    ds = _dataset(tmp_path)
    assert main(["redecide", str(ds), "--method", "percentile", "--keep-percent", "50", "--min-count", "2"]) == 0
    live = _live(ds)
    for label in ("a", "b"):
        rows = sorted((r for r in live.values() if r["label"] == label), key=lambda r: r["score"])
        assert [r["decision"] for r in rows] == ["rejected"] * 3 + ["accepted"] * 3
        assert {r["method"] for r in rows} == {"percentile"}
        for r in rows:
            assert (ds / r["file"]).is_file()
    assert (ds / "report" / "histogram.png").is_file()


def test_unknown_method_is_a_clear_error(tmp_path, capsys):
    ds = _dataset(tmp_path)
    assert main(["redecide", str(ds), "--method", "otsu"]) == 2
    assert "otsu" in capsys.readouterr().err
    assert all(r["decision"] == "accepted" for r in _live(ds).values()), "a refused refilter touched the dataset"


def test_unscored_records_keep_their_decision():
    fn = decide_fn_for(method_from("mean_std", k=1.0), min_count=1)
    records = [{"label": "a", "score": s, "decision": "accepted"} for s in (0.5, 0.52, 0.54, 0.1)]
    records.append({"label": "a", "score": None, "decision": "accepted", "reason": "unfiltered"})
    out = fn(records)
    assert out[-1] == (True, None, "unfiltered", False)
    assert [o[0] for o in out[:4]] == [True, True, True, False]  # threshold 0.415 - 0.182
    assert fn.method == "mean_std"


def _margin_dataset(tmp_path):
    """Six images per class, all above any threshold; item 5 of class a was rejected by the filter's
    class-margin check (class b's text beat its own), item 4 as a near-duplicate of item 3."""
    rng = np.random.default_rng(1)
    items = []
    for label, other in (("a", "b"), ("b", "a")):
        for j in range(6):
            own, rival = 0.30, 0.20
            reason, accepted = "ok", True
            emb = rng.random(4).astype(np.float32)
            if label == "a" and j == 5:
                own, rival, reason, accepted = 0.30, 0.34, "class_margin", False
            if label == "a" and j == 4:
                emb, reason, accepted = items[-1].embedding.copy(), "near_duplicate", False
            items.append(ScoredItem(image=rng.random((8, 8, 3), dtype=np.float32), label=label,
                                    prompt=f"{label} {j}", index=len(items), metadata={"pack_hash": "h"},
                                    score=0.30 + 0.001 * j, threshold=0.2, method="mean_std", accepted=accepted,
                                    reason=reason, embedding=emb, extra={"class_scores": {label: own, other: rival}}))
    ds = tmp_path / "ds"
    with DatasetWriter(ds) as writer:
        writer.write(items)
    return ds


def _by_prompt(ds):
    return {r["prompt"]: r for r in _live(ds).values()}


def test_rethreshold_keeps_the_filters_margin_and_duplicate_rejections(tmp_path):
    ds = _margin_dataset(tmp_path)
    assert main(["redecide", str(ds), "--method", "fixed", "--fixed-threshold", "0.1", "--min-count", "1"]) == 0
    rows = _by_prompt(ds)
    assert (rows["a 5"]["decision"], rows["a 5"]["reason"]) == ("rejected", "class_margin")
    assert (rows["a 4"]["decision"], rows["a 4"]["reason"]) == ("rejected", "near_duplicate")
    assert rows["a 5"]["threshold"] == 0.1 and rows["a 5"]["file"].startswith("rejected/")
    assert all(r["decision"] == "accepted" for p, r in rows.items() if p not in ("a 4", "a 5"))


def test_rerun_checks_read_the_stored_class_scores_and_embeddings(tmp_path):
    ds = _margin_dataset(tmp_path)
    # own text may trail another class's by up to 0.05: a 5 (0.30 vs 0.34) comes back
    assert main(["redecide", str(ds), "--method", "fixed", "--fixed-threshold", "0.1", "--min-count", "1",
                         "--class-margin", "-0.05"]) == 0
    rows = _by_prompt(ds)
    assert (rows["a 5"]["decision"], rows["a 5"]["reason"]) == ("accepted", "ok")
    assert rows["a 5"]["file"].startswith("images/") and (ds / rows["a 5"]["file"]).is_file()
    assert rows["a 4"]["reason"] == "near_duplicate"   # not re-run: kept

    # near-duplicate re-run at cosine 0 from the stored embeddings (all positive): only the first
    # image of each class survives
    assert main(["redecide", str(ds), "--method", "fixed", "--fixed-threshold", "0.1", "--min-count", "1",
                         "--near-duplicate", "0.0"]) == 0
    rows = _by_prompt(ds)
    assert sorted(p for p, r in rows.items() if r["decision"] == "accepted") == ["a 0", "b 0"]
    assert {r["reason"] for p, r in rows.items() if p not in ("a 0", "b 0", "a 5")} == {"near_duplicate"}
    assert rows["a 5"]["reason"] == "near_duplicate"   # accepted again, then a duplicate of a 0


def test_out_of_range_recheck_is_refused_and_touches_nothing(tmp_path):
    ds = _margin_dataset(tmp_path)
    before = (ds / "manifest.jsonl").read_text()
    assert main(["redecide", str(ds), "--near-duplicate", "1.5"]) == 2
    assert (ds / "manifest.jsonl").read_text() == before


def test_a_kept_rejection_is_no_near_duplicate_original():
    """Re-running only the near-duplicate check: an image the filter rejected for class margin
    stays rejected and does not make its look-alike a duplicate (else both would be lost)."""
    fn = decide_fn_for(method_from("fixed", fixed_threshold=0.1), min_count=1, near_dup=0.99)
    e = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    records = [
        {"label": "a", "score": 0.3, "decision": "rejected", "reason": "class_margin", "embedding": e},
        {"label": "a", "score": 0.3, "decision": "accepted", "reason": "ok", "embedding": e.copy()},
        {"label": "a", "score": 0.3, "decision": "accepted", "reason": "ok", "embedding": e.copy()},
    ]
    out = fn(records)
    assert [(o[0], o[2]) for o in out] == [(False, "class_margin"), (True, "ok"), (False, "near_duplicate")]
