"""``python -m runner status|reconcile|finalize``: dataset commands of the one CLI, one-line errors."""
import json
import subprocess
import sys

import pytest
from dtgen.runner.cli import main
from dtgen.nodes.store.writer import DatasetWriter
from PIL import Image
from support.pkg import ROOT

from support.datasets import check_consistent, make_items


@pytest.fixture
def ds(tmp_path):
    ds = tmp_path / "output" / "tableware"
    with DatasetWriter(ds) as w:
        w.write(make_items(range(30)))
    return ds


def test_status_counts_and_missing(ds, capsys):
    assert main(["status", str(ds), "--target", "cat=12"]) == 0
    out = json.loads(capsys.readouterr().out)
    view = check_consistent(ds).values()
    n_cat = sum(r["label"] == "cat" and r["decision"] == "accepted" for r in view)
    assert out["counts"]["cat"]["accepted"] == n_cat
    assert out["missing"] == {"cat": 12 - n_cat}


def test_status_is_read_only_even_on_a_torn_dataset(ds, capsys):
    """A crash mid-append left torn tails: status counts the complete records, says the dataset needs
    a reconcile, and changes no byte (the repair is reconcile's)."""
    with open(ds / "manifest.jsonl", "ab") as f:
        f.write(b'{"id": "torn')
    (ds / ".clean").unlink(missing_ok=True)
    bins = sorted((ds / "embeddings").glob("f32x*.bin"))
    assert bins
    with open(bins[0], "ab") as f:
        f.write(b"\x01\x02\x03")
    before = {p: p.read_bytes() for p in [ds / "manifest.jsonl", *bins]}
    assert main(["status", str(ds)]) == 0
    out, err = capsys.readouterr()
    assert sum(c["accepted"] + c["rejected"] for c in json.loads(out)["counts"].values()) == 30
    assert "was not closed cleanly" in err and f"python -m runner reconcile {ds}" in err
    assert {p: p.read_bytes() for p in before} == before
    assert main(["reconcile", str(ds)]) == 0   # the repair
    assert (ds / "manifest.jsonl").read_bytes() == before[ds / "manifest.jsonl"][:-len(b'{"id": "torn')]


def test_reconcile_moves_an_unrecorded_image_aside(ds, capsys):
    stray = ds / "images" / "cat" / "stray.png"
    Image.new("RGB", (4, 4)).save(stray)
    assert main(["reconcile", str(ds)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["orphans"]) == 1 and rep["orphans"][0].startswith("orphans/")
    assert not stray.exists()
    check_consistent(ds)


def test_finalize_splits_and_keeps_every_decision(ds, capsys):
    before = {r["id"]: r["decision"] for r in check_consistent(ds).values()}
    assert main(["finalize", str(ds), "--split", "0.8,0.2"]) == 0
    assert "report.json" in capsys.readouterr().out
    after = check_consistent(ds)
    assert {i: r["decision"] for i, r in after.items()} == before
    assert {r["split"] for r in after.values()} <= {"train", "val"}
    assert (ds / "report" / "report.json").is_file()


@pytest.mark.parametrize("case, message", [
    ("missing", "no such folder"),
    ("file", "is not a folder"),
    ("empty", "dataset.json is missing"),
    ("target", "expected label=N"),
    ("split", "fractions must sum to 1"),
])
def test_errors_are_one_line_and_exit_2(ds, tmp_path, capsys, case, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    argv = {"missing": ["status", str(tmp_path / "nope")],
            "file": ["reconcile", str(tmp_path / "a_file")],
            "empty": ["finalize", str(tmp_path / "empty")],
            "target": ["status", str(ds), "--target", "cat"],
            "split": ["finalize", str(ds), "--split", "0.5,0.6"]}[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_documented_invocation_from_the_checkout(ds, tmp_path):
    """`python -m runner status ...` run in the checkout folder, as the README says."""
    ok = subprocess.run([sys.executable, "-m", "runner", "status", str(ds)], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert set(json.loads(ok.stdout)["counts"]) == {"cat", "dog", "tea cup"}
    bad = subprocess.run([sys.executable, "-m", "runner", "reconcile", str(tmp_path / "nope")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
