"""Offline refilter: a stored dataset re-decided from its stored scores, nothing re-encoded."""
from __future__ import annotations

import json

import numpy as np

from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.dataset.writer import DatasetWriter
from dtgen.nodes.filtering import offline


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
    assert offline.main([str(ds), "--method", "percentile", "--keep-percent", "50", "--min-count", "2"]) == 0
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
    assert offline.main([str(ds), "--method", "otsu"]) == 2
    assert "otsu" in capsys.readouterr().err
    assert all(r["decision"] == "accepted" for r in _live(ds).values()), "a refused refilter touched the dataset"


def test_unscored_records_keep_their_decision():
    fn = offline.decide_fn_for(offline.method_from("mean_std", k=1.0), min_count=1)
    records = [{"label": "a", "score": s, "decision": "accepted"} for s in (0.5, 0.52, 0.54, 0.1)]
    records.append({"label": "a", "score": None, "decision": "accepted", "reason": "unfiltered"})
    out = fn(records)
    assert out[-1] == (True, None, "unfiltered", False)
    assert [o[0] for o in out[:4]] == [True, True, True, False]  # threshold 0.415 - 0.182
    assert fn.method == "mean_std"
