"""``finalize(..., split_folders=True)``: one ImageFolder tree per split under ``<dataset>/splits/``,
read back with the real torchvision ImageFolder and the real ``datasets.load_dataset``."""
import errno
import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
from dtgen.nodes.curation import splits as split_trees
from dtgen.nodes.curation.finalize import finalize
from dtgen.nodes.store import manifest
from dtgen.nodes.store.layout import DatasetSymlinkError, DatasetWriteError
from dtgen.nodes.store.writer import DatasetWriter
from dtgen.runner.cli import main

from support.datasets import check_consistent, make_items

SPLIT = "0.6,0.2,0.2"
NAMES = ("train", "val", "test")
ACCEPTED = sum(it.accepted for it in make_items(range(90)))   # every 4th rejected: 67


def expected(ds: Path) -> dict[str, Counter]:
    """{split: Counter(label folder)} of the accepted images, from the manifest's split column."""
    out = {}
    for rec in check_consistent(ds).values():
        if rec["decision"] == "accepted" and "split" in rec:
            out.setdefault(rec["split"], Counter())[rec["label_dir"]] += 1
    return out


def nonzero(counts: dict) -> dict:
    return {k: v for k, v in counts.items() if v}


def expected_files(ds: Path, name: str) -> set[str]:
    return {rec["file"].split("/", 1)[1] for rec in check_consistent(ds).values()
            if rec["decision"] == "accepted" and rec.get("split") == name}


def snapshot(ds: Path, skip=("splits", "report")) -> dict[str, tuple]:
    """Every file outside ``skip``: content hash, and inode + mtime for the images (finalize's reconcile
    rewrites images/metadata.jsonl with the same bytes)."""
    out = {}
    for path in sorted(ds.rglob("*")):
        rel = path.relative_to(ds)
        if rel.parts[0] in skip or path.is_dir():
            continue
        st = path.lstat()
        out[rel.as_posix()] = (hashlib.sha256(path.read_bytes()).hexdigest(),
                               (st.st_ino, st.st_mtime_ns) if path.suffix == ".png" else None)
    return out


def leftovers(ds: Path) -> list[str]:
    return sorted(p.name for p in ds.iterdir() if p.name.startswith(".splits"))


@pytest.fixture
def ds(tmp_path):
    ds = tmp_path / "output" / "tableware"
    with DatasetWriter(ds) as w:
        w.write(make_items(range(90)))   # cat / dog / tea cup, every 4th rejected
    return ds


@pytest.fixture
def built(ds):
    rep = finalize(ds, split=SPLIT, split_folders=True, echo=False)
    return ds, rep


def load_hf(tmp_path, monkeypatch, **kw):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets.disable_progress_bars()
    return datasets.load_dataset("imagefolder", cache_dir=str(tmp_path / "hf"), **kw)


def test_imagefolder_per_split_matches_the_manifest(built):
    torchvision = pytest.importorskip("torchvision")
    ds, rep = built
    want = expected(ds)
    assert set(want) == set(NAMES) and sum(sum(c.values()) for c in want.values()) == ACCEPTED
    for name in NAMES:
        folder = torchvision.datasets.ImageFolder(str(ds / "splits" / name))
        got = Counter(folder.classes[target] for _, target in folder.samples)
        assert got == want[name], name
        assert {Path(p).relative_to(ds / "splits" / name).as_posix() for p, _ in folder.samples} == \
            expected_files(ds, name)
        assert rep.split_folders.counts[name] == dict.fromkeys(want["train"], 0) | dict(want[name])
    data = json.loads(rep.report_json.read_text())["split_folders"]
    assert data["images"] == {n: sum(want[n].values()) for n in NAMES}
    assert list(data["images"]) == list(NAMES)   # train, val, test order
    assert {n: nonzero(c) for n, c in data["per_class"].items()} == {n: dict(want[n]) for n in NAMES}
    assert data["unsplit"] == 0 and data["linked"] + data["copied"] == ACCEPTED


def test_metadata_rows_have_the_images_columns_relative_to_the_split(built):
    ds, _ = built
    rows = {json.loads(x)["id"]: json.loads(x) for x in (ds / "images" / "metadata.jsonl").read_text().splitlines()}
    seen = set()
    for name in NAMES:
        split_rows = [json.loads(x) for x in (ds / "splits" / name / "metadata.jsonl").read_text().splitlines()]
        for row in split_rows:
            assert row == rows[row["id"]] and row["split"] == name   # same columns, same values
            assert (ds / "splits" / name / row["file_name"]).is_file()
        assert {r["file_name"] for r in split_rows} == expected_files(ds, name)
        seen |= {r["id"] for r in split_rows}
    assert seen == set(rows)   # every accepted image in exactly one split


def test_datasets_loads_one_split_or_all_at_once(built, tmp_path, monkeypatch):
    ds, _ = built
    splits = ds / "splits"
    want = expected(ds)
    ids = {n: {r["id"] for r in check_consistent(ds).values() if r["decision"] == "accepted" and r.get("split") == n}
           for n in NAMES}

    def check(d, name):
        assert set(d["id"]) == ids[name] and len(d) == len(ids[name])
        assert Counter(d["label"]) == want[name] and set(d["split"]) == {name}
        assert d[0]["image"].size == (8, 8)

    # one split: data_dir, and the data_files form that ignores folder-name guessing
    check(load_hf(tmp_path, monkeypatch, data_dir=str(splits / "train"), split="train"), "train")
    check(load_hf(tmp_path, monkeypatch, data_dir=str(splits / "val"), split="train"), "val")
    check(load_hf(tmp_path, monkeypatch, data_files=f"{splits}/test/**", split="train"), "test")
    # every split at once: datasets maps the folder names train / val / test to train / validation / test
    every = load_hf(tmp_path, monkeypatch, data_dir=str(splits))
    assert set(every) == {"train", "validation", "test"}
    for key, name in (("train", "train"), ("validation", "val"), ("test", "test")):
        check(every[key], name)
    explicit = load_hf(tmp_path, monkeypatch, data_files={"train": f"{splits}/train/**",
                                                          "validation": f"{splits}/val/**",
                                                          "test": f"{splits}/test/**"})
    for key, name in (("train", "train"), ("validation", "val"), ("test", "test")):
        check(explicit[key], name)
    # label as ClassLabel: the same class order as torchvision's ImageFolder when every class is present
    encoded = every.class_encode_column("label")
    torchvision = pytest.importorskip("torchvision")
    assert encoded["train"].features["label"].names == torchvision.datasets.ImageFolder(str(splits / "train")).classes


def test_hard_links_share_the_inode(built):
    ds, rep = built
    assert rep.split_folders.linked == ACCEPTED and rep.split_folders.copied == 0
    for name in NAMES:
        for rel in expected_files(ds, name):
            a, b = (ds / "splits" / name / rel).lstat(), (ds / "images" / rel).lstat()
            assert (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev) and a.st_nlink >= 2
    assert not [p for p in (ds / "splits").rglob("*") if p.is_symlink()]


def test_copies_where_the_file_system_refuses_links(ds, monkeypatch):
    calls = []

    def no_link(*args, **kw):
        calls.append(args)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(split_trees.os, "link", no_link)
    rep = finalize(ds, split=SPLIT, split_folders=True, echo=False)
    assert len(calls) == 1   # tried once, then copies only
    assert rep.split_folders.copied == ACCEPTED and rep.split_folders.linked == 0
    for name in NAMES:
        for rel in expected_files(ds, name):
            a, b = ds / "splits" / name / rel, ds / "images" / rel
            assert a.lstat().st_ino != b.lstat().st_ino and a.read_bytes() == b.read_bytes()
    assert "copies" in rep.split_folders.summary()


def test_other_link_errors_fail_and_keep_the_old_tree(built, monkeypatch):
    ds, _ = built
    before = {p.relative_to(ds).as_posix(): p.lstat().st_ino for p in (ds / "splits").rglob("*")}
    real, calls = os.link, []

    def disk_full(src, dst, **kw):
        calls.append(1)
        if len(calls) == 20:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, **kw)

    monkeypatch.setattr(split_trees.os, "link", disk_full)
    with pytest.raises(DatasetWriteError, match="split folders"):
        finalize(ds, split="0.5,0.25,0.25", split_folders=True, echo=False)
    after = {p.relative_to(ds).as_posix(): p.lstat().st_ino for p in (ds / "splits").rglob("*")}
    assert after == before and leftovers(ds) == []   # the old tree, whole; no half tree anywhere


def test_rerun_with_other_fractions_rebuilds_the_trees(built, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    ds, first = built

    def stored():   # images, rejected, embeddings, marker: bytes and inodes; records except their split
        files = {k: v for k, v in snapshot(ds).items() if k.split("/")[0] in ("images", "rejected", "embeddings",
                                                                              "dataset.json")
                 and k != "images/metadata.jsonl"}
        records = {i: {k: v for k, v in r.items() if k != "split"} for i, r in check_consistent(ds).items()}
        return files, records

    before = stored()
    swaps, real_exchange = [], split_trees._exchange
    monkeypatch.setattr(split_trees, "_exchange", lambda a, b: swaps.append(real_exchange(a, b)) or swaps[-1])
    for exchange in (True, False):   # renameat2(RENAME_EXCHANGE), and the two-rename fallback
        if not exchange:
            assert swaps == [sys.platform.startswith("linux")]   # one atomic exchange where Linux has it
            monkeypatch.setattr(split_trees, "_exchange", lambda a, b: False)
        rep = finalize(ds, split="0.4,0.3,0.3" if exchange else "0.9,0.05,0.05", split_folders=True, echo=False)
        want = expected(ds)
        assert {n: nonzero(c) for n, c in rep.split_folders.counts.items()} == {n: dict(want[n]) for n in NAMES}
        for name in NAMES:   # 5% test: a class may have no image there (an empty folder)
            folder = torchvision.datasets.ImageFolder(str(ds / "splits" / name), allow_empty=True)
            assert Counter(folder.classes[t] for _, t in folder.samples) == want[name]
            rows = (ds / "splits" / name / "metadata.jsonl").read_text().splitlines()
            assert len(rows) == sum(want[name].values())
        assert leftovers(ds) == [] and stored() == before
        assert rep.split_folders.images != first.split_folders.images
    assert rep.split_folders.images["train"] > 0.75 * ACCEPTED


def test_split_folders_change_nothing_outside_splits(ds):
    finalize(ds, split=SPLIT, echo=False)
    before = snapshot(ds)
    assert not (ds / "splits").exists()
    finalize(ds, split=SPLIT, split_folders=True, echo=False)
    assert snapshot(ds) == before
    finalize(ds, split=SPLIT, split_folders=True, echo=False)   # rebuilt again, still nothing else
    assert snapshot(ds) == before and leftovers(ds) == []


def test_without_the_flag_an_existing_tree_is_left_as_it_is(built):
    ds, _ = built
    before = {p.relative_to(ds).as_posix(): p.lstat().st_ino for p in (ds / "splits").rglob("*")}
    rep = finalize(ds, split="0.5,0.5", echo=False)
    assert rep.split_folders is None and json.loads(rep.report_json.read_text())["split_folders"] is None
    assert {p.relative_to(ds).as_posix(): p.lstat().st_ino for p in (ds / "splits").rglob("*")} == before


def test_needs_a_split(ds):
    before = snapshot(ds)
    with pytest.raises(ValueError, match="split_folders needs a split"):
        finalize(ds, split_folders=True, echo=False)
    assert snapshot(ds) == before and not (ds / "splits").exists()


def test_uses_the_recorded_split_and_counts_images_without_one(ds):
    finalize(ds, split=SPLIT, echo=False)
    with DatasetWriter(ds) as w:   # written after the split: no split column yet
        w.write(make_items(range(90, 102)))
    rep = finalize(ds, split_folders=True, echo=False)
    want = expected(ds)
    assert {n: nonzero(c) for n, c in rep.split_folders.counts.items()} == {n: dict(want[n]) for n in NAMES}
    assert rep.split_folders.unsplit == sum(it.accepted for it in make_items(range(90, 102))) > 0
    assert "no split yet" in rep.split_folders.summary()


def test_recover_puts_the_old_tree_back_and_removes_half_builds(built):
    ds, _ = built
    files = sorted(p.relative_to(ds / "splits").as_posix() for p in (ds / "splits").rglob("*"))
    os.rename(ds / "splits", ds / ".splits.old-123-abcd")          # died between the two renames
    (ds / ".splits.tmp-123-ef01" / "train" / "cat").mkdir(parents=True)   # and a half-built tree
    finalize(ds, echo=False)
    assert sorted(p.relative_to(ds / "splits").as_posix() for p in (ds / "splits").rglob("*")) == files
    assert leftovers(ds) == []


def test_a_symlinked_splits_folder_is_refused(ds, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (ds / "splits").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(DatasetSymlinkError):
        finalize(ds, split=SPLIT, split_folders=True, echo=False)
    assert list(elsewhere.iterdir()) == []


def test_a_symlinked_image_is_refused(ds, tmp_path):
    rec = next(r for r in manifest.live(manifest.read(ds).records).values() if r["decision"] == "accepted")
    real = tmp_path / "real.png"
    shutil.copyfile(ds / rec["file"], real)
    os.unlink(ds / rec["file"])
    os.symlink(real, ds / rec["file"])
    with pytest.raises(DatasetSymlinkError, match="symlink"):
        finalize(ds, split=SPLIT, split_folders=True, echo=False)
    assert not (ds / "splits").exists() and leftovers(ds) == []


def test_plan_refuses_split_names_that_cannot_be_folders():
    rec = {"decision": "accepted", "file": "images/cat/a.png", "label_dir": "cat", "id": "x"}
    with pytest.raises(ValueError, match="split name"):
        split_trees.plan([dict(rec, split="../x")])
    with pytest.raises(ValueError, match="differ only by case"):
        split_trees.plan([dict(rec, split="train"), dict(rec, split="Train", file="images/cat/b.png")])
    groups, unsplit = split_trees.plan([dict(rec, split="holdout"), dict(rec, split="val"), dict(rec, split="train"),
                                        dict(rec, decision="rejected", split="test"), dict(rec)])
    assert list(groups) == ["train", "val", "holdout"] and unsplit == 1


@pytest.mark.parametrize("command", ["finalize", "redecide"])
def test_cli_split_folders(ds, capsys, command):
    torchvision = pytest.importorskip("torchvision")
    assert main([command, str(ds), "--split", "0.8,0.1,0.1", "--split-folders"]) == 0
    out = capsys.readouterr().out
    assert "split folders" in out and str(ds / "splits") in out
    want = expected(ds)
    for name in NAMES:
        folder = torchvision.datasets.ImageFolder(str(ds / "splits" / name))
        assert Counter(folder.classes[t] for _, t in folder.samples) == want[name]


def test_cli_split_folders_without_a_split_is_a_one_line_error(ds, capsys):
    assert main(["finalize", str(ds), "--split-folders"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "split_folders needs a split" in err and err.count("\n") == 1


def test_a_class_missing_from_a_split_keeps_the_class_indices(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    ds = tmp_path / "small"
    with DatasetWriter(ds) as w:
        w.write(make_items(range(1, 4)))   # one accepted image per class
    # the split is a hash of the id: cut between the two lowest so that train gets one image, val two
    u = sorted(int(hashlib.sha256(i.encode()).hexdigest()[:12], 16) / 16**12 for i in check_consistent(ds))
    cut = (u[0] + u[1]) / 2
    rep = finalize(ds, split={"train": cut, "val": 1 - cut}, split_folders=True, echo=False)
    want = expected(ds)
    assert [sum(want[n].values()) for n in ("train", "val")] == [1, 2]
    classes = ["cat", "dog", "tea_cup"]
    for name in want:
        assert sorted(rep.split_folders.counts[name]) == classes
        missing = [c for c in classes if not want[name][c]]
        assert rep.split_folders.missing_classes.get(name, []) == missing and missing
        with pytest.raises(FileNotFoundError, match=missing[0]):   # loud, not shifted indices
            torchvision.datasets.ImageFolder(str(ds / "splits" / name))
        folder = torchvision.datasets.ImageFolder(str(ds / "splits" / name), allow_empty=True)
        assert folder.classes == classes
        assert Counter(folder.classes[t] for _, t in folder.samples) == want[name]
    assert json.loads(rep.report_json.read_text())["split_folders"]["missing_classes"] == rep.split_folders.missing_classes


def test_data_files_load_a_split_whose_classes_are_named_like_splits(tmp_path, monkeypatch):
    ds = tmp_path / "keywords"
    with DatasetWriter(ds) as w:   # datasets' split keywords as class folders (see docs: data_files never guesses)
        w.write(make_items(range(60), labels=("cat", "plate_test", "val")))
    finalize(ds, split=SPLIT, split_folders=True, echo=False)
    want, splits = expected(ds), ds / "splits"
    train = load_hf(tmp_path, monkeypatch, data_files=f"{splits}/train/**", split="train")
    assert Counter(train["label"]) == want["train"] and set(train["split"]) == {"train"}
    every = load_hf(tmp_path, monkeypatch, data_dir=str(splits))
    assert {k: Counter(every[k]["label"]) for k in every} == {"train": want["train"], "validation": want["val"],
                                                              "test": want["test"]}


def test_a_failed_second_rename_puts_the_old_tree_back(built, monkeypatch):
    ds, _ = built
    before = {p.relative_to(ds).as_posix(): p.lstat().st_ino for p in (ds / "splits").rglob("*")}
    monkeypatch.setattr(split_trees, "_exchange", lambda a, b: False)   # the two-rename swap (not Linux)
    real, calls = os.rename, []

    def rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:   # the new tree onto splits/ (e.g. a file open on Windows)
            raise PermissionError(errno.EACCES, "Access is denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(split_trees.os, "rename", rename)
    with pytest.raises(DatasetWriteError, match="previous splits/ is unchanged"):
        finalize(ds, split="0.5,0.25,0.25", split_folders=True, echo=False)
    assert calls[0][1].startswith(".splits.old-") and calls[2] == (calls[0][1], "splits")
    assert {p.relative_to(ds).as_posix(): p.lstat().st_ino for p in (ds / "splits").rglob("*")} == before
    assert leftovers(ds) == []


def test_split_metadata_points_at_the_masks_from_the_split_folder(tmp_path):
    """``mask`` in ``splits/<split>/metadata.jsonl`` is relative to that folder and opens the PNG."""
    import numpy as np
    from PIL import Image

    items = make_items(range(12))
    for it in items:
        imap = np.zeros(np.asarray(it.image).shape[:2], dtype=np.uint16)
        imap[2:6, 3:7] = 1
        it.instance_map, it.instance_labels = imap, (it.label,)
    ds = tmp_path / "ds"
    with DatasetWriter(ds) as w:
        w.write(items)
    finalize(ds, split=SPLIT, split_folders=True, echo=False)
    rows = [json.loads(line) for name in NAMES if (ds / "splits" / name / "metadata.jsonl").exists()
            for line in (ds / "splits" / name / "metadata.jsonl").read_text().splitlines()]
    assert rows and all(r["mask"].startswith("../../masks/") for r in rows)
    for name in NAMES:
        meta = ds / "splits" / name / "metadata.jsonl"
        for line in (meta.read_text().splitlines() if meta.exists() else []):
            row = json.loads(line)
            mask = np.asarray(Image.open(meta.parent / row["mask"]))
            assert (mask == 1).sum() == 16 and row["objects"][0]["bbox"] == [3, 2, 4, 4]
