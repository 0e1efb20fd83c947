"""Finalize exports instance masks: COCO (read back by pycocotools and torchvision's CocoDetection,
every RLE equal to its stored mask) and YOLO (labels/ beside images/, data.yaml); per split when the
dataset has one; rebuilt when images move; refused past the annotation budget."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from dtgen.nodes.curation import export_coco
from dtgen.nodes.curation.export_coco import ExportError, rle, write_coco
from dtgen.nodes.curation.finalize import finalize, finalize_summary, parse_export
from dtgen.nodes.store import manifest
from dtgen.nodes.store.writer import DatasetWriter
from dtgen.runner.cli import main
from PIL import Image

from support.datasets import check_consistent, make_items

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")   # pycocotools


def _items_module():
    path = Path(__file__).parents[1] / "store" / "test_masks.py"   # masked_item(i): the one definition
    spec = importlib.util.spec_from_file_location("dtgen_masked_items", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


masked_item = _items_module().masked_item
SPLIT = {"train": 0.6, "val": 0.2, "test": 0.2}


def by_index(records):
    """A decide_fn: accept items with an even index (moves images both ways)."""
    return [(r["index"] % 2 == 0, 0.25, "ok" if r["index"] % 2 == 0 else "below_threshold", False) for r in records]


def written(ds, n=24):
    with DatasetWriter(ds) as w:
        w.write([masked_item(i) for i in range(n)])
    return ds


@pytest.fixture
def split_ds(tmp_path):
    ds = written(tmp_path / "ds")
    rep = finalize(ds, split=SPLIT, echo=False)
    return ds, rep


def accepted(ds) -> dict:
    return {r["id"]: r for r in check_consistent(ds).values() if r["decision"] == "accepted"}


def stored_mask(ds, rec) -> np.ndarray:
    with Image.open(ds / rec["mask"]) as im:
        return np.asarray(im)


def test_coco_per_split_reads_back_in_pycocotools(split_ds):
    coco_mod = pytest.importorskip("pycocotools.coco")
    ds, rep = split_ds
    acc = accepted(ds)
    files = rep.exports["coco"]["files"]
    assert set(files) == {r["split"] for r in acc.values()} and not (ds / "annotations" / "instances.json").exists()
    seen_images, seen_ann_ids, n_anns = {}, set(), 0
    for split, rel in files.items():
        assert rel == f"annotations/instances_{split}.json"
        coco = coco_mod.COCO(str(ds / rel))
        cats = coco.loadCats(coco.getCatIds())
        assert [c["name"] for c in cats] == ["cat", "dog", "tea_cup"] and [c["id"] for c in cats] == [1, 2, 3]
        for img in coco.loadImgs(coco.getImgIds()):
            rec = acc[img["dtgen_id"]]
            assert rec["split"] == split and img["file_name"] == rec["file"][len("images/"):]
            assert (img["width"], img["height"]) == (64, 64)
            assert img["id"] not in seen_images
            seen_images[img["id"]] = rec["id"]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
            assert len(anns) == len(rec["instances"])    # an image without instances: listed, no annotations
            for ann in anns:
                inst = rec["instances"][ann["instance_id"] - 1]
                want = (stored_mask(ds, rec) == inst["id"]).astype(np.uint8)
                assert np.array_equal(coco.annToMask(ann), want)
                assert ann["bbox"] == inst["bbox"] and ann["area"] == inst["area"] == int(want.sum())
                assert ann["iscrowd"] == 0 and cats[ann["category_id"] - 1]["name"] == inst["label"].replace(" ", "_")
                assert ann["id"] not in seen_ann_ids
                seen_ann_ids.add(ann["id"])
                n_anns += 1
    assert sorted(seen_images.values()) == sorted(acc)           # every accepted image once
    assert n_anns == rep.exports["coco"]["annotations"] == sum(len(r["instances"]) for r in acc.values()) > 0
    assert any(not r["instances"] for r in acc.values())


def test_torchvision_coco_detection_loads_every_image(split_ds):
    pytest.importorskip("pycocotools")
    torchvision = pytest.importorskip("torchvision")
    ds, rep = split_ds
    acc = accepted(ds)
    n = 0
    for rel in rep.exports["coco"]["files"].values():
        data = torchvision.datasets.CocoDetection(root=str(ds / "images"), annFile=str(ds / rel))
        for k in range(len(data)):
            image, target = data[k]
            rec = acc[data.coco.imgs[data.ids[k]]["dtgen_id"]]
            assert image.size == (64, 64)
            assert [t["bbox"] for t in target] == [i["bbox"] for i in rec["instances"]]
            n += 1
    assert n == len(acc)


def test_categories_follow_imagefolder_classes(split_ds):
    torchvision = pytest.importorskip("torchvision")
    ds, rep = split_ds
    cats = json.loads((ds / rep.exports["coco"]["files"]["train"]).read_text())["categories"]
    assert [c["name"] for c in cats] == torchvision.datasets.ImageFolder(str(ds / "images")).classes


def test_yolo_labels_mirror_images_and_match_boxes(split_ds):
    yaml = pytest.importorskip("yaml")
    ds, rep = split_ds
    acc = accepted(ds)
    names = ["cat", "dog", "tea_cup"]
    labels = sorted(str(p.relative_to(ds / "labels")) for p in (ds / "labels").rglob("*.txt"))
    assert labels == sorted(r["file"][len("images/"):].rsplit(".", 1)[0] + ".txt" for r in acc.values())
    for rec in acc.values():
        rows = [line.split() for line in (ds / "labels" / (rec["file"][7:].rsplit(".", 1)[0] + ".txt")).read_text()
                .splitlines()]
        assert len(rows) == len(rec["instances"])
        for row, inst in zip(rows, rec["instances"]):
            x, y, w, h = inst["bbox"]
            assert names[int(row[0])] == inst["label"].replace(" ", "_")
            assert np.allclose([float(v) for v in row[1:]], [(x + w / 2) / 64, (y + h / 2) / 64, w / 64, h / 64],
                               atol=1e-6)
    data = yaml.safe_load((ds / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(names)) and data["nc"] == 3 and Path(data["path"]) == ds.resolve()
    for split in ("train", "val", "test"):
        assert data[split] == f"yolo_{split}.txt"
        lines = (ds / data[split]).read_text().splitlines()
        assert sorted(lines) == sorted(f"./{r['file']}" for r in acc.values() if r["split"] == split)
        assert all((ds / line).is_file() for line in lines)
    assert rep.exports["yolo"]["labels"] == len(acc)


def test_rle_matches_pycocotools_on_edges():
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(7)
    for _ in range(40):
        h, w = rng.integers(1, 20, size=2)
        m = rng.integers(0, 4, size=(h, w)).astype(np.uint8)
        m[0, 0], m[-1, -1] = rng.integers(0, 4, size=2)     # instances on the first and last pixel
        for k in np.unique(m):
            if k == 0:
                continue
            ys, xs = np.nonzero(m == k)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            ours = rle(m, int(k), bbox)
            assert ours["size"] == [int(h), int(w)] and sum(ours["counts"]) == h * w
            decoded = mask_api.decode(mask_api.frPyObjects(ours, int(h), int(w)))
            assert np.array_equal(decoded, (m == k).astype(np.uint8))
            ref = mask_api.encode(np.asfortranarray((m == k).astype(np.uint8)))
            assert mask_api.area(ref) == sum(ours["counts"][1::2])


def test_no_split_then_split_replaces_the_files(tmp_path):
    yaml = pytest.importorskip("yaml")
    ds = written(tmp_path / "ds", 12)
    rep = finalize(ds, echo=False)
    assert rep.exports["coco"]["files"] == {"all": "annotations/instances.json"}
    data = yaml.safe_load((ds / "data.yaml").read_text())
    assert data["train"] == data["val"] == "images" and "test" not in data
    assert not list(ds.glob("yolo_*.txt"))
    report = json.loads(rep.report_json.read_text())
    assert report["exports"]["coco"]["annotations"] == rep.exports["coco"]["annotations"]
    assert "COCO:" in finalize_summary(rep) and "YOLO:" in finalize_summary(rep)

    rep = finalize(ds, split=(0.5, 0.5), echo=False)
    assert sorted(p.name for p in (ds / "annotations").iterdir()) == ["instances_train.json", "instances_val.json"]
    assert sorted(p.name for p in ds.glob("yolo_*.txt")) == ["yolo_train.txt", "yolo_val.txt"]
    assert not [p for p in ds.iterdir() if p.name.startswith(".labels.")]   # no leftover trees


def test_moves_keep_masks_and_exports_follow_the_decisions(tmp_path):
    ds = written(tmp_path / "ds")
    before = {r["id"]: r["mask"] for r in check_consistent(ds).values()}
    finalize(ds, echo=False)
    rep = finalize(ds, decide_fn=by_index, echo=False)
    assert rep.moved["to_accepted"] and rep.moved["to_rejected"]
    view = check_consistent(ds)
    assert {i: r["mask"] for i, r in view.items()} == before          # masks never move
    acc = accepted(ds)
    assert all(r["index"] % 2 == 0 for r in acc.values())
    labels = {str(p.relative_to(ds / "labels"))[:-4] for p in (ds / "labels").rglob("*.txt")}
    assert labels == {r["file"][7:].rsplit(".", 1)[0] for r in acc.values()}   # moved-away images lost theirs
    coco = json.loads((ds / "annotations" / "instances.json").read_text())
    assert {img["dtgen_id"] for img in coco["images"]} == set(acc)


def test_no_instances_no_export_unless_asked(tmp_path):
    ds = tmp_path / "ds"
    with DatasetWriter(ds) as w:
        w.write(make_items(range(9)))
    rep = finalize(ds, echo=False)
    assert rep.exports == {} and json.loads(rep.report_json.read_text())["exports"] is None
    assert not (ds / "annotations").exists() and not (ds / "labels").exists() and not (ds / "data.yaml").exists()
    rep = finalize(ds, export=("coco",), echo=False)
    coco = json.loads((ds / "annotations" / "instances.json").read_text())
    assert coco["annotations"] == [] and len(coco["images"]) == len(accepted(ds)) and not (ds / "labels").exists()


def test_export_none_leaves_earlier_exports(tmp_path):
    ds = written(tmp_path / "ds", 6)
    finalize(ds, echo=False)
    before = (ds / "annotations" / "instances.json").read_bytes()
    rep = finalize(ds, export="none", echo=False)
    assert rep.exports == {} and (ds / "annotations" / "instances.json").read_bytes() == before


def test_parse_export():
    assert parse_export(None) is None
    assert parse_export("yolo, COCO") == ("coco", "yolo") and parse_export(["yolo"]) == ("yolo",)
    assert parse_export("none") == () == parse_export(()) == parse_export("")
    assert parse_export(True) == ("coco", "yolo") and parse_export(False) == ()
    with pytest.raises(ValueError, match=r"unknown format\(s\) \['voc'\]"):
        parse_export("coco,voc")


def test_annotation_budget_is_refused_before_writing(tmp_path, monkeypatch):
    ds = written(tmp_path / "ds", 10)
    records = list(manifest.live(manifest.read(ds).records).values())
    n = sum(len(r["instances"]) for r in records if r["decision"] == "accepted")
    with pytest.raises(ExportError, match=rf"annotations: {n} annotations; COCO export is limited to 5"):
        write_coco(ds, records, max_annotations=5)
    assert not (ds / "annotations").exists()
    monkeypatch.setattr(export_coco, "MAX_ANNOTATIONS", 5)
    with pytest.raises(ExportError):
        finalize(ds, echo=False)
    assert not (ds / "annotations").exists() and not (ds / "labels").exists()   # COCO refused first


def test_a_mask_changed_after_writing_is_named(tmp_path):
    ds = written(tmp_path / "ds", 6)
    rec = next(r for r in accepted(ds).values() if r["instances"])
    m = stored_mask(ds, rec).copy()
    m[m == 1] = 0
    Image.fromarray(m).save(ds / rec["mask"])
    records = list(manifest.live(manifest.read(ds).records).values())
    with pytest.raises(ExportError, match=rf"{rec['mask']}: instance 1 has 0 pixels, record {rec['id']!r} says"):
        write_coco(ds, records)


def test_cli_export_flag(tmp_path, capsys):
    ds = written(tmp_path / "ds", 6)
    assert main(["finalize", str(ds), "--export", "yolo"]) == 0
    assert (ds / "data.yaml").is_file() and not (ds / "annotations").exists()
    assert "YOLO:" in capsys.readouterr().out
    assert main(["finalize", str(ds), "--export", "coco,yolo"]) == 0
    assert (ds / "annotations" / "instances.json").is_file()
    assert main(["finalize", str(ds), "--export", "voc"]) == 2
    assert "error: export 'voc'" in capsys.readouterr().err
