"""The user's real images join a dataset (nodes/curation/real_images.py with the real store):
``import_real`` writes each image once as an accepted ``source: real`` record (id = hash of the
file, so a second run, a renamed folder or a duplicate file stores nothing new and decodes only
new files), in batches that stay durable across an interrupt; the counting rule (``real`` apart
from ``accepted`` unless ``counts_toward_quota``), the writer's status and summary, generated items
beside them, quotas, and finalize / redecide keeping real images accepted. Real photos from
``skimage.data``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from dtgen.nodes.common.identity import item_id
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.curation import real_images as real_images_mod
from dtgen.nodes.curation.finalize import finalize
from dtgen.nodes.curation.real_images import ImportResult, import_real
from dtgen.nodes.curation.redecide import decide_fn_for
from dtgen.nodes.curation.thresholds import get_method
from dtgen.nodes.fewshot import realset as realset_mod
from dtgen.nodes.fewshot.imageset import scan
from dtgen.nodes.fewshot.pixels import load_image
from dtgen.nodes.fewshot.realset import file_digest, make_set, real_item
from dtgen.nodes.store.reader import class_counts, live_records
from dtgen.nodes.store.writer import DatasetWriter, summary, to_uint8
from support.datasets import check_consistent

SIZE = 64
PHOTOS = {"plate_clean": {"coffee.jpg": data.coffee, "chelsea.png": data.chelsea, "astronaut.png": data.astronaut},
          "bowl_clean": {"rocket.jpg": data.rocket, "camera.png": data.camera}}


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
    return path


def caption(label: str) -> str:
    return f"dtgtableware, a photo of {label}"


def realset_of(root: Path, **kw):
    return make_set(root, scan(root), caption, size=SIZE, part="all", **kw)


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "real"
    for label, photos in PHOTOS.items():
        for name, photo in photos.items():
            _save(root / label / name, photo())
    return root


@pytest.fixture
def ds(tmp_path) -> Path:
    return tmp_path / "ds"


@pytest.fixture
def count_decodes(monkeypatch):
    """Every file ``realset.load_image`` decodes, in order."""
    decoded = []
    real = realset_mod.load_image
    monkeypatch.setattr(realset_mod, "load_image", lambda path, *a, **k: decoded.append(Path(path)) or real(path, *a, **k))
    return decoded


def generated(i: int, label: str, score: float | None = None) -> ScoredItem:
    rng = np.random.default_rng(i)
    return ScoredItem(image=rng.random((16, 16, 3), dtype=np.float32), label=label, prompt=f"generated {label} {i}",
                      seed=i, score=score, threshold=None if score is None else 0.0,
                      accepted=True, reason="ok" if score is not None else "unfiltered",
                      embedding=None if score is None else rng.standard_normal(4).astype(np.float32))


# --- the first import ---------------------------------------------------------------------------------

def test_first_import_stores_every_image_accepted_as_source_real(root, ds):
    rs = realset_of(root)
    with DatasetWriter(ds) as w:
        result = import_real(w, rs)
    assert (result.written, result.already) == (5, 0)
    assert result.line() == "real images: 5 imported, 0 already in the dataset"
    records = {r["metadata"]["real_file"]: r for r in live_records(ds)}
    assert sorted(records) == sorted(f"{label}/{name}" for label, photos in PHOTOS.items() for name in photos)
    for i, im in enumerate(rs.images):
        rec = records[f"{im.label}/{im.path.name}"]
        digest = file_digest(im.path)
        assert rec["id"] == item_id(real_item(rs, i, digest, load=False))
        assert rec["source"] == "real" and rec["decision"] == "accepted" and rec["reason"] == "real"
        assert rec["score"] is None and rec["threshold"] is None and rec["index"] is None
        assert rec["label"] == im.label and rec["prompt"] == caption(im.label)
        assert rec["file"] == f"images/{im.label}/real_{rec['id']}.png"
        assert rec["metadata"]["sha256"] == digest and rec["metadata"]["item_id"] == "real:" + digest[:32]
        assert rec["metadata"]["counts_toward_quota"] is False
        with Image.open(ds / rec["file"]) as stored:       # the fitted pixels, losslessly
            assert stored.size == (SIZE, SIZE)
            assert np.array_equal(np.asarray(stored.convert("RGB")), to_uint8(load_image(im.path, SIZE, "crop"), "x"))
    assert sorted(result.paths) == sorted(ds / r["file"] for r in records.values())
    rows = [json.loads(line) for line in (ds / "images" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(row["source"] == "real" for row in rows)
    assert sorted("images/" + row["file_name"] for row in rows) == sorted(r["file"] for r in records.values())
    check_consistent(ds)


def test_import_writes_in_durable_batches(root, ds, monkeypatch):
    monkeypatch.setattr(real_images_mod, "BATCH", 2)
    sizes = []
    with DatasetWriter(ds) as w:
        write = w.write
        monkeypatch.setattr(w, "write", lambda items, *a, **k: sizes.append(len(items)) or write(items, *a, **k))
        result = import_real(w, realset_of(root))
    assert sizes == [2, 2, 1] and result.written == 5 and len(result.paths) == 5


def test_an_interrupt_keeps_the_flushed_batches_and_the_next_run_completes(root, ds, monkeypatch):
    monkeypatch.setattr(real_images_mod, "BATCH", 2)
    ticks = []

    def interrupt():
        ticks.append(1)
        if len(ticks) == 4:                                # before the 4th image: 2 written, 1 pending
            raise KeyboardInterrupt

    rs = realset_of(root)
    with DatasetWriter(ds) as w, pytest.raises(KeyboardInterrupt):
        import_real(w, rs, check_interrupt=interrupt)
    assert len(ticks) == 4 and len(live_records(ds)) == 2
    check_consistent(ds)
    calls = []
    with DatasetWriter(ds) as w:
        result = import_real(w, rs, check_interrupt=lambda: calls.append(1))
    assert (result.written, result.already) == (3, 2) and len(calls) == 5
    assert len(live_records(ds)) == 5


# --- idempotence ------------------------------------------------------------------------------------

def test_a_second_import_writes_nothing_and_decodes_nothing(root, ds, count_decodes):
    with DatasetWriter(ds) as w:
        import_real(w, realset_of(root))
    assert len(count_decodes) == 5
    manifest_before = (ds / "manifest.jsonl").read_bytes()
    files_before = sorted((ds / "images").rglob("*.png"))
    with DatasetWriter(ds) as w:                           # a new writer: a later queue run
        result = import_real(w, realset_of(root))
    assert (result.written, result.already, result.paths) == (0, 5, [])
    assert result.line() == "real images: 0 imported, 5 already in the dataset"
    assert len(count_decodes) == 5                         # nothing decoded again
    assert (ds / "manifest.jsonl").read_bytes() == manifest_before
    assert sorted((ds / "images").rglob("*.png")) == files_before


def test_only_a_new_file_is_imported_and_decoded(root, ds, count_decodes):
    with DatasetWriter(ds) as w:
        import_real(w, realset_of(root))
    new = _save(root / "bowl_clean" / "zz_coins.png", data.coins())
    count_decodes.clear()
    with DatasetWriter(ds) as w:
        result = import_real(w, realset_of(root))
    assert (result.written, result.already) == (1, 5)
    assert count_decodes == [new]
    assert [r["metadata"]["real_file"] for r in live_records(ds) if r["metadata"]["sha256"] == file_digest(new)] \
        == ["bowl_clean/zz_coins.png"]
    assert len(live_records(ds)) == 6


def test_renaming_the_root_folder_does_not_import_twice(root, ds, count_decodes):
    with DatasetWriter(ds) as w:
        import_real(w, realset_of(root))
    moved = root.parent / "my photos renamed"
    root.rename(moved)
    count_decodes.clear()
    with DatasetWriter(ds) as w:
        result = import_real(w, realset_of(moved))
    assert (result.written, result.already) == (0, 5) and count_decodes == []
    assert len(live_records(ds)) == 5


def test_a_renamed_file_is_the_same_image_but_an_edited_one_is_new(root, ds):
    with DatasetWriter(ds) as w:
        import_real(w, realset_of(root))
    (root / "plate_clean" / "coffee.jpg").rename(root / "plate_clean" / "morning.jpg")
    _save(root / "bowl_clean" / "camera.png", data.camera()[::-1].copy())   # same name, new pixels
    with DatasetWriter(ds) as w:
        result = import_real(w, realset_of(root))
    assert (result.written, result.already) == (1, 4)
    assert len(live_records(ds)) == 6


def test_the_same_file_twice_in_the_set_is_stored_once(root, ds):
    shutil.copyfile(root / "plate_clean" / "chelsea.png", root / "plate_clean" / "chelsea_copy.png")
    with DatasetWriter(ds) as w:
        result = import_real(w, realset_of(root))
    assert (result.written, result.already) == (5, 1)
    assert len(live_records(ds)) == 5
    assert class_counts(live_records(ds))["plate_clean"]["real"] == 3


def test_the_same_file_twice_across_batches_is_stored_once(root, ds, monkeypatch):
    monkeypatch.setattr(real_images_mod, "BATCH", 1)
    shutil.copyfile(root / "plate_clean" / "chelsea.png", root / "plate_clean" / "chelsea_copy.png")
    with DatasetWriter(ds) as w:
        result = import_real(w, realset_of(root))
    assert (result.written, result.already) == (5, 1) and len(live_records(ds)) == 5


# --- counting ---------------------------------------------------------------------------------------

def test_real_images_are_counted_apart_from_accepted(root, ds):
    with DatasetWriter(ds) as w:
        import_real(w, realset_of(root))
        status = w.status()
    assert class_counts(live_records(ds)) == {"plate_clean": {"accepted": 0, "rejected": 0, "real": 3},
                                              "bowl_clean": {"accepted": 0, "rejected": 0, "real": 2}}
    assert status["plate_clean"] == {"accepted": 0, "rejected": 0, "target": None, "missing": None, "real": 3}
    assert status["bowl_clean"]["real"] == 2 and status["bowl_clean"]["accepted"] == 0


def test_counts_toward_quota_counts_them_in_accepted_too(root, ds):
    with DatasetWriter(ds) as w:
        result = import_real(w, realset_of(root), counts_toward_quota=True)
        status = w.status()
    assert result.written == 5
    assert all(r["metadata"]["counts_toward_quota"] is True for r in live_records(ds))
    assert class_counts(live_records(ds)) == {"plate_clean": {"accepted": 3, "rejected": 0, "real": 3},
                                              "bowl_clean": {"accepted": 2, "rejected": 0, "real": 2}}
    assert status["plate_clean"]["accepted"] == 3 and status["plate_clean"]["real"] == 3


def test_generated_items_beside_real_ones_are_source_generated(root, ds):
    with DatasetWriter(ds) as w:
        w.write([generated(i, label) for i, label in enumerate(["plate_clean", "plate_clean", "cup_clean"])])
        import_real(w, realset_of(root))
        status = w.status()
        text = summary(ds, None, status)
    records = live_records(ds)
    sources = {r["metadata"].get("real_file", r["prompt"]): r["source"] for r in records}
    assert sorted(v for v in sources.values()) == ["generated"] * 3 + ["real"] * 5
    for rec in records:
        if rec["source"] == "generated":
            assert rec["file"].startswith(f"images/{rec['label']}/item_") and rec["reason"] == "unfiltered"
    rows = [json.loads(line) for line in (ds / "images" / "metadata.jsonl").read_text().splitlines()]
    assert sorted(row["source"] for row in rows) == ["generated"] * 3 + ["real"] * 5
    assert class_counts(records) == {"plate_clean": {"accepted": 2, "rejected": 0, "real": 3},
                                     "cup_clean": {"accepted": 1, "rejected": 0},
                                     "bowl_clean": {"accepted": 0, "rejected": 0, "real": 2}}
    assert "real" not in status["cup_clean"]               # only classes with real images show it
    assert status["plate_clean"]["real"] == 3 and status["bowl_clean"]["real"] == 2
    lines = text.splitlines()
    assert lines[0] == str(ds)
    assert "plate_clean: 2 accepted, 0 rejected, 3 real" in lines
    assert "bowl_clean: 0 accepted, 0 rejected, 2 real" in lines
    assert "cup_clean: 1 accepted, 0 rejected" in lines     # no "real" part


def test_a_quota_counts_generated_images_only(root, ds):
    with DatasetWriter(ds, quotas={"plate_clean": 3}) as w:
        import_real(w, realset_of(root))                   # 3 real plates, not counted
        written = w.write([generated(i, "plate_clean") for i in range(5)])
        status = w.status()
    assert written.written["accepted"] == 3 and written.skipped_quota == 2
    assert status["plate_clean"] == {"accepted": 3, "rejected": 0, "target": 3, "missing": 0, "real": 3}


def test_real_images_in_the_quota_fill_it(root, ds):
    with DatasetWriter(ds, quotas={"plate_clean": 4}) as w:
        import_real(w, realset_of(root), counts_toward_quota=True)
        written = w.write([generated(i, "plate_clean") for i in range(5)])
        status = w.status()
    assert written.written["accepted"] == 1 and written.skipped_quota == 4
    assert status["plate_clean"]["accepted"] == 4 and status["plate_clean"]["missing"] == 0


def test_real_images_outside_the_quota_are_stored_when_the_class_is_full(root, ds):
    with DatasetWriter(ds, quotas={"plate_clean": 2}) as w:
        w.write([generated(i, "plate_clean") for i in range(2)])   # the class is at its quota
        result = import_real(w, realset_of(root))          # counts_toward_quota=False: outside quotas
    assert result.written + result.already == 5 and result.over_quota == 0
    assert class_counts(live_records(ds))["plate_clean"].get("real") == 3


def test_real_images_in_the_quota_past_a_full_class_are_reported_not_stored(root, ds):
    with DatasetWriter(ds, quotas={"plate_clean": 2}) as w:
        w.write([generated(i, "plate_clean") for i in range(2)])
        result = import_real(w, realset_of(root), counts_toward_quota=True)
    assert result.over_quota == 3 and "3 not stored (class at its quota)" in result.line()
    assert class_counts(live_records(ds))["plate_clean"].get("real") is None


# --- finalize / redecide ----------------------------------------------------------------------------

def _scored_population(ds: Path) -> None:
    """20 scored generated plates (0.10 .. 0.29) and 20 bowls, all accepted at write time."""
    items = [generated(100 + i, label, score=0.10 + 0.01 * i) for label in ("plate_clean", "bowl_clean")
             for i in range(20)]
    for k, it in enumerate(items):
        it.seed = 100 + k                                  # distinct content ids per item
    with DatasetWriter(ds) as w:
        w.write(items)


def test_redecide_in_finalize_keeps_real_images_accepted(root, ds):
    _scored_population(ds)
    with DatasetWriter(ds) as w:
        import_real(w, realset_of(root))
    real_before = {r["id"]: r["file"] for r in live_records(ds) if r["source"] == "real"}
    report = finalize(ds, decide_fn=decide_fn_for(get_method("percentile", p=50.0)), split="0.5,0.5", echo=False)
    assert report.moved["to_rejected"] == 20 and report.moved["to_accepted"] == 0   # half of each class
    view = check_consistent(ds)
    real_after = {r["id"]: r for r in view.values() if r["source"] == "real"}
    assert set(real_after) == set(real_before)
    for rid, rec in real_after.items():
        assert rec["decision"] == "accepted" and rec["reason"] == "real" and rec["score"] is None
        assert rec["file"] == real_before[rid] and (ds / rec["file"]).is_file()
        assert rec["file"].startswith("images/")
    generated_rejected = [r for r in view.values() if r["source"] == "generated" and r["decision"] == "rejected"]
    assert len(generated_rejected) == 20 and all(r["file"].startswith("rejected/") for r in generated_rejected)
    assert report.per_class["plate_clean"]["real"] == 3 and report.per_class["bowl_clean"]["real"] == 2
    assert report.per_class["plate_clean"]["accepted"] == 10 and report.per_class["plate_clean"]["total"] == 20
    rows = [json.loads(line) for line in (ds / "images" / "metadata.jsonl").read_text().splitlines()]
    assert sum(row["source"] == "real" for row in rows) == 5 and len(rows) == 25
    assert report.split and sum(report.split.values()) == 25          # real images are split too


def test_a_strict_redecide_rejects_every_generated_image_but_no_real_one(root, ds):
    _scored_population(ds)
    with DatasetWriter(ds) as w:
        import_real(w, realset_of(root), counts_toward_quota=True)
    finalize(ds, decide_fn=decide_fn_for(get_method("fixed", value=0.99)), echo=False)
    view = check_consistent(ds)
    assert {r["decision"] for r in view.values() if r["source"] == "generated"} == {"rejected"}
    assert {r["decision"] for r in view.values() if r["source"] == "real"} == {"accepted"}
    assert class_counts(view.values())["plate_clean"] == {"accepted": 3, "rejected": 20, "real": 3}
    with DatasetWriter(ds) as w:                           # and they are still known after the rewrite
        result = import_real(w, realset_of(root))
        assert w.status()["plate_clean"]["real"] == 3
    assert (result.written, result.already) == (0, 5)


def test_finalize_without_redecide_keeps_real_images(root, ds):
    with DatasetWriter(ds) as w:
        import_real(w, realset_of(root))
    report = finalize(ds, echo=False)
    assert report.moved == {"to_accepted": 0, "to_rejected": 0}
    assert report.per_class["plate_clean"] == {"accepted": 0, "rejected": 0, "real": 3, "total": 0,
                                               "acceptance_rate": None}
    assert all(r["decision"] == "accepted" for r in check_consistent(ds).values())


def test_import_result_line():
    assert ImportResult(written=2, already=7).line() == "real images: 2 imported, 7 already in the dataset"
    assert ImportResult().paths == [] and ImportResult().paths is not ImportResult().paths
