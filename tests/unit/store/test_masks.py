"""Instance masks in the dataset: one 8-bit PNG per image beside the image's record, checked before
anything is written, kept together with its image by reconcile, visible to `datasets`."""
import errno
import json

import numpy as np
import pytest
from dtgen.nodes.common.instances import InstanceError, instances_of
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.store import fsio, manifest, metadata
from dtgen.nodes.store.layout import DatasetWriteError
from dtgen.nodes.store.lock import DatasetLock
from dtgen.nodes.store.reconcile import reconcile
from dtgen.nodes.store.writer import DatasetWriter
from PIL import Image

from support.datasets import check_consistent, make_items

LABELS = ("cat", "dog", "tea cup")


def instance_map(i: int, size: int = 64) -> np.ndarray:
    """A rectangle (id 1) and a disc (id 2) that overlap nowhere, placed by ``i``."""
    m = np.zeros((size, size), np.uint16)
    x, y = 2 + i % 7, 3 + i % 5
    m[y:y + 12, x:x + 20] = 1
    yy, xx = np.mgrid[:size, :size]
    m[(yy - 42) ** 2 + (xx - 40) ** 2 < (8 + i % 4) ** 2] = 2
    return m


def masked_item(i: int, size: int = 64) -> ScoredItem:
    """Item ``i``: two instances, except every fifth has no instance map and every fifth (offset 4)
    an empty one (a background image)."""
    rng = np.random.default_rng(i)
    label = LABELS[i % 3]
    imap, labels = instance_map(i, size), (label, LABELS[(i + 1) % 3])
    if i % 5 == 3:
        imap, labels = None, ()
    elif i % 5 == 4:
        imap, labels = np.zeros((size, size), np.uint16), ()
    return ScoredItem(image=rng.random((size, size, 3), dtype=np.float32), label=label, prompt=f"item {i}",
                      seed=i, index=i, metadata={"pack": "test", "pack_hash": "ph1"}, score=0.2 + 0.01 * (i % 17),
                      threshold=0.25, method="mean_std", accepted=i % 4 != 0, reason="ok",
                      embedding=rng.standard_normal(4).astype(np.float32), instance_map=imap, instance_labels=labels)


def write(ds, indices):
    with DatasetWriter(ds) as w:
        return w.write([masked_item(i) for i in indices])


def test_masks_are_stored_beside_their_records(tmp_path):
    ds = tmp_path / "ds"
    write(ds, range(10))
    view = check_consistent(ds)
    assert len(view) == 10
    rows = {json.loads(x)["id"]: json.loads(x) for x in (ds / "images" / "metadata.jsonl").read_text().splitlines()}
    for rec in view.values():
        item = masked_item(rec["index"])
        if item.instance_map is None:
            assert rec["mask"] is None and rec["instances"] == [] and "mask_bytes" not in rec
        else:
            stem = rec["file"].rsplit("/", 1)[1].rsplit(".", 1)[0]
            assert rec["mask"] == f"masks/{rec['label_dir']}/{stem}.png"     # same stem, whatever the tree
            with Image.open(ds / rec["mask"]) as im:
                assert im.mode == "L" and im.size == (64, 64)
                assert np.array_equal(np.asarray(im), item.instance_map.astype(np.uint8))
            assert rec["mask_bytes"] == (ds / rec["mask"]).stat().st_size
            want = [{"id": i.id, "label": i.label, "bbox": list(i.bbox), "area": i.area}
                    for i in instances_of(item.instance_map, item.instance_labels)]
            assert rec["instances"] == want
        if rec["decision"] == "accepted":
            row = rows[rec["id"]]
            assert row["mask"] == (None if rec["mask"] is None else "../" + rec["mask"])
            assert (ds / "images" / row["mask"]).is_file() if row["mask"] else True
            assert row["objects"] == rec["instances"]
    assert {r["instances"][0]["bbox"][2] for r in view.values() if r["instances"]} == {20}


def test_records_written_before_masks_read_as_none():
    row = metadata.row({"id": "x", "file": "images/cat/a.png", "label": "cat", "label_dir": "cat", "decision": "accepted"})
    assert row["mask"] is None and row["objects"] == []


@pytest.mark.parametrize("case,match", [
    ("shape", r"item 1 \(label 'dog', index 1\): instance_map shape \(32, 64\) differs from the image's H x W \(64, 64\)"),
    ("labels_without_map", r"item 1 .*instance_labels \['dog'\] given without an instance_map"),
    ("missing_label", r"item 1 .*holds id 2 but only 1 label"),
    ("bad_label", r"item 1 .*instance 2 label 'a/b'"),
])
def test_bad_masks_are_refused_before_anything_is_written(tmp_path, case, match):
    ds = tmp_path / "ds"
    bad = masked_item(1)
    if case == "shape":
        bad.instance_map = bad.instance_map[:32]
    elif case == "labels_without_map":
        bad.instance_map, bad.instance_labels = None, ("dog",)
    elif case == "missing_label":
        bad.instance_labels = bad.instance_labels[:1]
    else:
        bad.instance_labels = ("dog", "a/b")
    with DatasetWriter(ds) as w:
        with pytest.raises(InstanceError, match=match):
            w.write([masked_item(0), bad, masked_item(2)])
    assert check_consistent(ds) == {} and not (ds / "masks").exists()


def test_a_mask_without_a_record_goes_to_orphans(tmp_path):
    ds = tmp_path / "ds"
    write(ds, range(3))
    stray = ds / "masks" / "cat" / "000099_deadbeef.png"
    Image.fromarray(instance_map(99).astype(np.uint8)).save(stray)
    with DatasetLock(ds):
        report = reconcile(ds)
    assert report.orphans == ["orphans/masks/cat/000099_deadbeef.png"]
    assert (ds / "orphans" / "masks" / "cat" / "000099_deadbeef.png").is_file()
    assert len(check_consistent(ds)) == 3


@pytest.mark.parametrize("harm", ["deleted", "truncated"])
def test_a_record_whose_mask_is_gone_or_damaged_is_set_aside_and_made_again(tmp_path, harm):
    ds = tmp_path / "ds"
    write(ds, range(6))
    rec = next(r for r in check_consistent(ds).values() if r["mask"] and r["decision"] == "accepted")
    mask, image = ds / rec["mask"], ds / rec["file"]
    if harm == "deleted":
        mask.unlink()
    else:
        mask.write_bytes(mask.read_bytes()[:40])
    with DatasetLock(ds):
        report = reconcile(ds)
    assert len(report.damaged) == 1 and rec["mask"] in report.damaged[0]
    assert ("missing" if harm == "deleted" else "bytes") in report.damaged[0]
    assert not image.exists() and (ds / "orphans" / "damaged" / rec["file"]).is_file()     # kept, not deleted
    assert (ds / "orphans" / "damaged" / rec["mask"]).is_file() == (harm == "truncated")
    view = check_consistent(ds)     # no image without its mask, no mask without its image
    assert rec["id"] not in view and len(view) == 5
    res = write(ds, range(6))
    assert sum(res.written.values()) == 1                               # the item is made again
    again = check_consistent(ds)
    assert len(again) == 6 and (ds / rec["mask"]).is_file()


def test_verify_finds_a_mask_of_another_size(tmp_path):
    ds = tmp_path / "ds"
    write(ds, range(3))
    rec = next(r for r in check_consistent(ds).values() if r["mask"])
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(ds / rec["mask"])
    lines = [json.loads(x) for x in (ds / "manifest.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("mask_bytes", None)                                   # no size to compare
    (ds / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    with DatasetLock(ds):
        assert reconcile(ds).damaged == []
        report = reconcile(ds, verify=True)
    assert len(report.damaged) == 1 and "32x32 pixels, the image is 64x64" in report.damaged[0]
    check_consistent(ds)


def test_finalize_style_move_keeps_the_mask_where_it_is(tmp_path):
    """An interrupted finalize move (file in the other tree, no line): recovered, mask untouched."""
    ds = tmp_path / "ds"
    write(ds, range(3))
    rec = next(r for r in check_consistent(ds).values() if r["mask"] and r["decision"] == "accepted")
    dest = ds / rec["file"].replace("images/", "rejected/", 1)
    dest.parent.mkdir(parents=True, exist_ok=True)
    (ds / rec["file"]).rename(dest)
    with DatasetLock(ds):
        report = reconcile(ds)
    assert report.recovered == [rec["id"]]
    now = check_consistent(ds)[rec["id"]]
    assert now["decision"] == "rejected" and now["mask"] == rec["mask"] and (ds / rec["mask"]).is_file()


def test_disk_full_while_writing_a_mask_names_the_mask(tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    real_replace, calls = fsio.os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:          # mask, image of item 0, then the mask of item 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    with DatasetWriter(ds) as w:
        monkeypatch.setattr(fsio.os, "replace", replace)
        with pytest.raises(DatasetWriteError, match=r"masks/dog/000001_.*could not write mask.*No space left"):
            w.write([masked_item(i) for i in range(3)])
        monkeypatch.undo()
        assert len(check_consistent(ds)) == 1
        res = w.write([masked_item(i) for i in range(3)])
    assert sum(res.written.values()) == 2 and len(check_consistent(ds)) == 3


def test_manifest_append_fails_parks_masks_with_their_images(tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    with DatasetWriter(ds) as w:
        def fail(path, data):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(manifest, "append_durable", fail)
        with pytest.raises(DatasetWriteError, match="orphans"):
            w.write([masked_item(i) for i in range(3)])
    assert len(list((ds / "orphans" / "masks").rglob("*.png"))) == 3
    assert len(list((ds / "orphans" / "images").rglob("*.png"))) + len(list((ds / "orphans" / "rejected").rglob("*.png"))) == 3
    check_consistent(ds)


def test_masks_beside_plain_items_and_loaders(tmp_path, monkeypatch):
    """`datasets` shows the mask column (paths relative to images/), ImageFolder still sees only
    images/ (masks/ is outside it)."""
    datasets = pytest.importorskip("datasets")
    torchvision = pytest.importorskip("torchvision")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ds = tmp_path / "ds"
    with DatasetWriter(ds) as w:
        w.write([masked_item(i) for i in range(12)])
        w.write(make_items(range(100, 103), size=64))
    view = check_consistent(ds)
    accepted = {r["id"]: r for r in view.values() if r["decision"] == "accepted"}
    train = datasets.load_dataset("imagefolder", data_dir=str(ds / "images"), split="train",
                                  cache_dir=str(tmp_path / "hf"))
    assert {"mask", "objects", "image", "label"} <= set(train.column_names) and len(train) == len(accepted)
    for row_id, mask, objects in zip(train["id"], train["mask"], train["objects"]):
        rec = accepted[row_id]
        assert mask == (None if rec["mask"] is None else f"../{rec['mask']}")
        assert objects == rec["instances"]
        if mask:
            assert (ds / "images" / mask).resolve() == (ds / rec["mask"]).resolve()
    folder = torchvision.datasets.ImageFolder(str(ds / "images"))
    assert folder.classes == ["cat", "dog", "tea_cup"] and len(folder) == len(accepted)
