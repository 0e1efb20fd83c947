import json

import numpy as np
import pytest
from dtgen.nodes.store import manifest
from dtgen.nodes.curation import finalize as finalize_mod
from dtgen.nodes.store.clean_marker import is_clean
from dtgen.nodes.curation.finalize import finalize, parse_split
from dtgen.nodes.store.writer import DatasetWriter
from PIL import Image

from support.datasets import check_consistent, make_items


def by_score(threshold):
    """Decision callable like the filter's refilter: accept score >= threshold."""
    def decide(records):
        assert all(isinstance(r["embedding"], np.ndarray) for r in records)  # history embeddings attached
        return [(r["score"] >= threshold, threshold, "ok" if r["score"] >= threshold else "below_threshold", False)
                for r in records]
    return decide


@pytest.fixture
def ds(tmp_path):
    ds = tmp_path / "ds"
    with DatasetWriter(ds) as w:
        w.write(make_items(range(30)))
    return ds


def test_finalize_redecides_moves_and_reports(ds, capsys):
    rep = finalize(ds, decide_fn=by_score(0.3), split={"train": 0.6, "val": 0.2, "test": 0.2})
    view = check_consistent(ds)
    for rec in view.values():
        assert (rec["decision"] == "accepted") == (rec["score"] >= 0.3)
        assert rec["threshold"] == 0.3 and rec["split"] in ("train", "val", "test")
    assert rep.moved["to_accepted"] + rep.moved["to_rejected"] > 0
    n_acc = sum(r["decision"] == "accepted" for r in view.values())
    assert sum(c["accepted"] for c in rep.per_class.values()) == n_acc == sum(rep.split.values())
    report = json.loads(rep.report_json.read_text())
    assert report["per_class"]["cat"]["total"] == 10
    assert "tea cup" in capsys.readouterr().out  # printed table
    for path in rep.contact_sheets.values():
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 0
    meta = [json.loads(x) for x in (ds / "images" / "metadata.jsonl").read_text().splitlines()]
    assert len(meta) == n_acc and all("split" in m for m in meta)
    assert list((ds).glob("manifest.jsonl.bak-*"))  # old manifest kept

    # deterministic: same split and nothing moves a second time; an unchanged finalize neither
    # rewrites the manifest nor adds a backup, and leaves the dataset marked clean (O(1) next open)
    backups = sorted(ds.glob("manifest.jsonl.bak-*"))
    before = (ds / "manifest.jsonl").stat()
    again = finalize(ds, decide_fn=by_score(0.3), split={"train": 0.6, "val": 0.2, "test": 0.2}, echo=False)
    assert again.moved == {"to_accepted": 0, "to_rejected": 0}
    assert {r["id"]: r["split"] for r in check_consistent(ds).values()} == {r["id"]: r["split"] for r in view.values()}
    assert sorted(ds.glob("manifest.jsonl.bak-*")) == backups
    after = (ds / "manifest.jsonl").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert is_clean(ds)


def test_interrupted_finalize_is_recovered(ds, monkeypatch):
    calls = []
    real = manifest.append

    def append(dataset_dir, records):
        calls.append(1)
        if len(calls) == 3:  # die after the 3rd move, before its line is written
            raise KeyboardInterrupt
        return real(dataset_dir, records)

    monkeypatch.setattr(manifest, "append", append)
    with pytest.raises(KeyboardInterrupt):
        finalize(ds, decide_fn=by_score(0.3))
    monkeypatch.undo()
    with DatasetWriter(ds) as w:  # open reconciles
        assert len(w.reconciled.recovered) == 1 and not w.reconciled.orphans
    check_consistent(ds)
    finalize(ds, decide_fn=by_score(0.3), echo=False)
    for rec in check_consistent(ds).values():
        assert (rec["decision"] == "accepted") == (rec["score"] >= 0.3)


def test_plot_callable_and_bad_decisions(ds):
    seen = {}

    def plot(records, path):
        seen["n"] = len(records)
        path.write_bytes(b"png")

    rep = finalize(ds, plot_fn=plot, echo=False)
    assert seen["n"] == 30 and rep.plot == ds / "report" / "histogram.png" and rep.plot.exists()
    with pytest.raises(ValueError, match="returned 1 decisions for 30 records"):
        finalize(ds, decide_fn=lambda records: [(True, 0.1, "ok", False)], echo=False)
    check_consistent(ds)


def test_split_string_form():
    assert parse_split("0.8, 0.1,0.1") == {"train": 0.8, "val": 0.1, "test": 0.1}


@pytest.mark.parametrize("bad", [(0.5, 0.6), (1.2,), {"train": -0.1, "val": 1.1}, (0.3, 0.3, 0.3, 0.1), "0.8;0.2",
                                 {"../x": 1.0}])
def test_bad_split(bad):
    with pytest.raises(ValueError, match="split"):
        parse_split(bad)


def test_split_fractions_are_roughly_kept():
    ids = [f"{i:016x}" for i in range(4000)]
    got = [finalize_mod.split_of(i, {"train": 0.8, "val": 0.1, "test": 0.1}) for i in ids]
    assert abs(got.count("train") / 4000 - 0.8) < 0.03 and abs(got.count("test") / 4000 - 0.1) < 0.02



def test_finalize_summary_is_the_table_moves_and_split(tmp_path):
    from dtgen.nodes.curation.finalize import finalize, finalize_summary

    ds = tmp_path / "ds"
    with DatasetWriter(ds) as w:
        w.write(make_items(range(12)))
    report = finalize(ds, split="0.5,0.5", echo=False)
    text = finalize_summary(report).splitlines()
    assert text[0].split()[:3] == ["label", "accepted", "rejected"]
    assert "moved: 0 to accepted, 0 to rejected" in text
    assert text[-1].startswith("split (accepted): ")
    assert sum(int(part.split()[-1]) for part in text[-1].split(": ", 1)[1].split(", ")) == \
        sum(c["accepted"] for c in report.per_class.values())
