import errno
import json

import numpy as np
import pytest
from dtgen.nodes.store import fsio, manifest
from dtgen.nodes.store.layout import DatasetFormatError, DatasetWriteError
from dtgen.nodes.store.lock import DatasetLock
from dtgen.nodes.store.paths import DatasetPathError
from dtgen.nodes.store.reconcile import reconcile
from dtgen.nodes.store.writer import DatasetWriter
from PIL import Image

from support.datasets import check_consistent, make_item, make_items


def test_write_layout_records_and_duplicates(tmp_path, items):
    ds = tmp_path / "ds"
    models = {"clip": {"name": "ViT-B-32", "sha256": "ab12"}}
    with DatasetWriter(ds) as w:
        res = w.write(items, models, {"steps": 4, "cfg": 4.5})
        again = w.write(items[:5])
    n_acc = sum(it.accepted for it in items)
    assert res.written == {"accepted": n_acc, "rejected": len(items) - n_acc}
    assert again.written == {"accepted": 0, "rejected": 0}
    assert sum(again.skipped_duplicate.values()) == 5
    view = check_consistent(ds)
    assert len(view) == len(items)
    rec = next(r for r in view.values() if r["index"] == 2)
    assert rec["file"] == f"images/tea_cup/000002_{rec['id'][:8]}.png"
    assert rec["label"] == "tea cup" and rec["models"] == models and rec["sampler"]["cfg"] == 4.5
    assert rec["seed"] == 1002 and rec["pack_hash"] == "ph1" and rec["decision"] == "accepted"
    assert json.loads((ds / "dataset.json").read_text())["format"] == "dtgen-dataset"
    # pixels survive as ComfyUI's SaveImage would store them
    expected = np.clip(255.0 * items[2].image, 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(ds / rec["file"])), expected)
    meta = [json.loads(x) for x in (ds / "images" / "metadata.jsonl").read_text().splitlines()]
    assert sorted(m["file_name"] for m in meta) == sorted(r["file"][7:] for r in view.values()
                                                           if r["decision"] == "accepted")


def test_duplicate_seen_across_reopen_and_other_pack(tmp_path):
    ds = tmp_path / "ds"
    with DatasetWriter(ds) as w:
        w.write(make_items(range(3)))
    with DatasetWriter(ds) as w:
        res = w.write(make_items(range(3)) + make_items(range(3), pack_hash="other"))
    assert sum(res.skipped_duplicate.values()) == 3 and sum(res.written.values()) == 3


@pytest.mark.parametrize("fmt,ext", [("png", ".png"), ("jpeg", ".jpg"), ("webp", ".webp")])
def test_formats(tmp_path, fmt, ext):
    with DatasetWriter(tmp_path / "ds", image_format=fmt, quality=80) as w:
        res = w.write([make_item(1, size=16)], png_text={"prompt": {"3": {"class_type": "KSampler"}}, "workflow": "{}"})
    path = res.paths[0]
    assert path.suffix == ext
    with Image.open(path) as im:
        assert im.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt] and im.size == (16, 16)
        if fmt == "png":
            assert json.loads(im.text["prompt"]) == {"3": {"class_type": "KSampler"}}
            assert im.text["workflow"] == "{}"


def test_bad_options_and_bad_image(tmp_path):
    with pytest.raises(ValueError, match="image_format 'gif'"):
        DatasetWriter(tmp_path / "a", image_format="gif")
    with pytest.raises(ValueError, match="quality 0"):
        DatasetWriter(tmp_path / "a", quality=0)
    bad = make_item(5)
    bad.image = np.zeros((4, 4, 2), np.float32)
    with DatasetWriter(tmp_path / "ds") as w:
        with pytest.raises(ValueError, match=r"item 1 \(label 'tea cup', index 5\).*shape \(4, 4, 2\)"):
            w.write([make_item(1), bad, make_item(9)])
    assert len(check_consistent(tmp_path / "ds")) == 1  # the good item before it is kept and recorded


def test_quotas_and_status(tmp_path):
    items = make_items(range(24), accepted=True)
    with DatasetWriter(tmp_path / "ds", quotas={"cat": 2, "dog": 5}) as w:
        res = w.write(items)
        st = w.status()
    assert st["cat"] == {"accepted": 2, "rejected": 0, "target": 2, "missing": 0}
    assert st["dog"]["accepted"] == 5 and st["dog"]["missing"] == 0
    assert st["tea cup"] == {"accepted": 8, "rejected": 0, "target": None, "missing": None}
    assert res.skipped_quota == (8 - 2) + (8 - 5)


def test_foreign_folder_is_refused_untouched(tmp_path):
    ds = tmp_path / "photos"
    ds.mkdir()
    (ds / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(DatasetFormatError, match="not written by DTGen"):
        DatasetWriter(ds).__enter__()
    assert [p.name for p in ds.iterdir()] == ["holiday.jpg"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dataset.json").write_text('{"format": "something-else"}')
    with pytest.raises(DatasetFormatError, match="format must be 'dtgen-dataset'"):
        DatasetWriter(tmp_path / "bad").__enter__()


def test_label_collision_is_refused_before_writing(tmp_path):
    with DatasetWriter(tmp_path / "ds") as w:
        w.write([make_item(0, labels=("Cat",))])
        with pytest.raises(DatasetPathError, match="collides with label 'Cat'"):
            w.write([make_item(1, labels=("dog",)), make_item(2, labels=("cat",))])
    assert len(check_consistent(tmp_path / "ds")) == 1
    with DatasetWriter(tmp_path / "ds") as w:  # also across processes/reopen
        with pytest.raises(DatasetPathError, match="collides"):
            w.write([make_item(3, labels=("CAT",))])


def test_disk_full_mid_batch(tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    real_replace, calls = fsio.os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    with DatasetWriter(ds) as w:
        monkeypatch.setattr(fsio.os, "replace", replace)
        with pytest.raises(DatasetWriteError) as e:
            w.write(make_items(range(6)))
        monkeypatch.undo()
        assert str(calls[2]) in str(e.value) and "No space left" in str(e.value)
        assert "2 earlier item(s)" in str(e.value)
        assert len(check_consistent(ds)) == 2
        res = w.write(make_items(range(6)))
    assert sum(res.written.values()) == 4 and sum(res.skipped_duplicate.values()) == 2
    assert len(check_consistent(ds)) == 6


def test_manifest_append_fails(tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    with DatasetWriter(ds) as w:
        w.write(make_items(range(2)))
        before = (ds / "manifest.jsonl").read_bytes()

        def fail(path, data):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(manifest, "append_durable", fail)
        with pytest.raises(DatasetWriteError, match=r"manifest\.jsonl.*Permission denied.*orphans"):
            w.write(make_items(range(2, 5)))
    assert (ds / "manifest.jsonl").read_bytes() == before
    assert len(list((ds / "orphans").rglob("*.png"))) == 3  # kept, not deleted
    assert len(check_consistent(ds)) == 2


def test_truncated_manifest_line_and_orphans(tmp_path):
    ds = tmp_path / "ds"
    with DatasetWriter(ds) as w:
        w.write(make_items(range(4)))
    good = (ds / "manifest.jsonl").read_bytes()
    lines = good.splitlines(keepends=True)
    (ds / "manifest.jsonl").write_bytes(b"".join(lines[:3]) + lines[3][:40])  # killed mid-append
    (ds / "images" / "cat" / ".x.png.tmp-1-ab").write_bytes(b"half")
    with DatasetWriter(ds) as w:
        rep = w.reconciled
        assert w.status()["cat"]["accepted"] + w.status()["cat"]["rejected"] == 1  # index 3 (cat) lost its line
    assert rep.corrupt_lines == 1 and rep.temps_removed == ["images/cat/.x.png.tmp-1-ab"]
    assert (ds / rep.corrupt_file).read_bytes() == lines[3][:40] + b"\n"
    assert len(rep.orphans) == 1 and (ds / rep.orphans[0]).exists()
    assert len(check_consistent(ds)) == 3
    with DatasetWriter(ds) as w:  # resuming writes exactly the lost item
        res = w.write(make_items(range(4)))
    assert sum(res.written.values()) == 1


def test_line_without_file_dropped_with_backup(tmp_path):
    ds = tmp_path / "ds"
    with DatasetWriter(ds) as w:
        res = w.write(make_items(range(3)))
    res.paths[1].unlink()
    with DatasetLock(ds):
        rep = reconcile(ds)
    assert len(rep.dropped) == 1 and (ds / rep.backup).read_bytes().count(b"\n") == 3
    assert len(check_consistent(ds)) == 2


def test_open_skips_the_full_reconcile_after_a_clean_write(tmp_path, monkeypatch):
    """A full reconcile walks every image; after a completed write the next open must not pay
    for it (5,000-image runs open the dataset once per queue run), but any interruption must."""
    import numpy as np

    from dtgen.nodes.common.records import ScoredItem
    from dtgen.nodes.store import reconcile as reconcile_mod
    from dtgen.nodes.store import writer as writer_mod

    calls = []
    real = reconcile_mod.reconcile
    monkeypatch.setattr(reconcile_mod, "reconcile", lambda d, **kw: calls.append(d) or real(d, **kw))
    ds = tmp_path / "ds"
    item = ScoredItem(image=np.zeros((4, 4, 3), np.float32), label="a", prompt="p", index=0,
                      metadata={"pack_hash": "h"})
    with writer_mod.DatasetWriter(ds) as w:
        w.write([item])
    assert len(calls) == 1                      # first open of a new dataset
    with writer_mod.DatasetWriter(ds):
        pass
    assert len(calls) == 1                      # clean: skipped
    with open(ds / "manifest.jsonl", "ab") as f:  # someone else appended behind our back
        f.write(b'{"truncated": ')
    with writer_mod.DatasetWriter(ds) as w:
        assert w.reconciled.corrupt_lines == 1   # stamp no longer matches: full reconcile
    assert len(calls) == 2


def test_what_the_writer_node_shows_and_stores_around_a_write(tmp_path):
    import json as _json

    from dtgen.nodes.store.writer import png_text, quotas_for, summary

    items = make_items(range(6))
    assert quotas_for(items, 0) is None
    assert quotas_for(items, 2) == {"cat": 2, "dog": 2, "tea cup": 2}
    assert png_text(None, None) is None
    assert png_text({"1": {}}, {"workflow": {"nodes": []}}) == {"prompt": '{"1": {}}', "workflow": '{"nodes": []}'}
    with DatasetWriter(tmp_path / "ds", quotas=quotas_for(items, 2)) as w:
        result = w.write(items)
        again = w.write(items)
        text = summary(tmp_path / "ds", again, w.status())
    assert sum(result.written.values()) == 6
    assert "this run: 0 accepted + 0 rejected written; 6 skipped, already in the dataset" in text
    assert text.splitlines()[0] == str(tmp_path / "ds") and "cat: " in text and "missing" in text
    assert _json.dumps(w.status())   # JSON-ready status
