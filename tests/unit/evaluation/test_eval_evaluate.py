"""``evaluate`` end to end on datasets written with the real DatasetWriter and a fake encoder:
the arms (few-shot real, synthetic, both, per source), stored embeddings reused or refused, the
report files, label overlap, bad input (no common class, a class without test image, a corrupt
test or dataset image, a test image that is also a training image), and nothing but report/
written into the dataset."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from dtgen.nodes.evaluation import EvaluationError, EvaluationReport, evaluate
from dtgen.nodes.evaluation.features import FeatureSource
from dtgen.nodes.fewshot.imageset import scan
from dtgen.nodes.fewshot.realset import make_set
from dtgen.nodes.store.layout import DatasetFormatError
from dtgen.nodes.store.reader import live_records
from PIL import Image
from evalkit import (
    CLASSES,
    COLOURS,
    DIM,
    SIZE,
    image_folder,
    synthetic_item,
    tree_state,
    write_dataset,
)


def synthetic(per_class: int = 8, rejected: int = 2, source=None, start: int = 0, **kw):
    items, i = [], start
    for label in CLASSES:
        for n in range(per_class + rejected):
            items.append(synthetic_item(i, label, score=0.8 if n < per_class else 0.1, accepted=n < per_class,
                                        source=source, **kw))
            i += 1
    return items


@pytest.fixture
def real_root(tmp_path) -> Path:
    return image_folder(tmp_path / "real", {c: 2 for c in CLASSES}, seed=1)


@pytest.fixture
def test_root(tmp_path) -> Path:
    return image_folder(tmp_path / "test", {c: 4 for c in CLASSES}, seed=2)


@pytest.fixture
def ds(tmp_path, real_root) -> Path:
    return write_dataset(tmp_path / "ds", synthetic(), real_root)


def run(ds, test, encoder, **kw) -> EvaluationReport:
    return evaluate(ds, test, encoder, image_size=SIZE, **kw)


# -- the arms ------------------------------------------------------------------------------------

def test_arms_from_the_dataset_and_its_real_images(ds, test_root, encoder):
    rep = run(ds, test_root, encoder)
    assert rep.classes == CLASSES
    assert [a.name for a in rep.arms] == ["fewshot", "synthetic", "synthetic_fewshot"]
    assert [a.title for a in rep.arms] == ["few-shot real", "synthetic", "synthetic + few-shot"]
    assert [a.n_train for a in rep.arms] == [6, 24, 30]
    assert rep.arms[0].train_counts == {c: 2 for c in CLASSES}
    assert rep.arms[1].train_counts == {c: 8 for c in CLASSES}     # accepted only, never the rejected
    for arm in rep.arms:                                             # colour classes: separable
        assert arm.metrics.accuracy == 1.0 and arm.metrics.macro_f1 == 1.0
        assert arm.metrics.support == {c: 4 for c in CLASSES}
    assert set(rep.metrics) == {"fewshot", "synthetic", "synthetic_fewshot"}
    assert rep.metrics["synthetic"]["recall"] == {c: 1.0 for c in CLASSES}
    assert rep.overlap == {"dataset_labels": list(CLASSES), "test_classes": list(CLASSES), "common": list(CLASSES)}
    # stored embeddings used for the synthetic images (8 re-encoded to check them); real records,
    # having none, and the test images encoded
    assert rep.features["stored"] == 24 and rep.features["checked"] == 8
    assert rep.features["encoded_records"] == 6 and rep.features["encoded_files"] == 12
    assert encoder.images == 8 + 6 + 12 and rep.features["dim"] == DIM
    assert rep.sweep is None and rep.best is None


def test_table_text_and_report_files(ds, test_root, encoder):
    rep = run(ds, test_root, encoder)
    lines = rep.table.splitlines()
    assert lines[0].split("|")[1:-1] and "n train" in lines[0] and "per-class recall" in lines[0]
    assert "| few-shot real " in lines[2] and "100.0 %" in lines[2] and "blue 1.00, green 1.00, red 1.00" in lines[2]
    text = rep.text()
    assert rep.table in text and "test set:" in text and f"report: {ds / 'report' / 'evaluation.json'}" in text
    data = json.loads((ds / "report" / "evaluation.json").read_text())
    assert data["format"] == "dtgen-evaluation" and data["classes"] == list(CLASSES)
    assert data["arms"]["synthetic"]["n_train"] == 24 and data["arms"]["fewshot"]["accuracy"] == 1.0
    assert data["arms"]["synthetic"]["confusion"] == [[4, 0, 0], [0, 4, 0], [0, 0, 4]]
    assert data["table"] == rep.table and data["test"]["counts"] == {c: 4 for c in CLASSES}
    pngs = sorted(p.name for p in (ds / "report").glob("confusion_*.png"))
    assert pngs == ["confusion_fewshot.png", "confusion_synthetic.png", "confusion_synthetic_fewshot.png"]
    assert set(rep.plots) == set(rep.plot_files) == {"fewshot", "synthetic", "synthetic_fewshot"}
    for img in rep.plots.values():
        assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3
    preview = rep.preview()
    assert preview.shape[1] > max(img.shape[1] for img in rep.plots.values())


def test_per_source_arms_only_with_several_sources(tmp_path, real_root, test_root, encoder):
    items = synthetic(per_class=4, source="copy_paste") + synthetic(per_class=5, start=100)
    ds = write_dataset(tmp_path / "hy", items, real_root)
    rep = run(ds, test_root, encoder)
    assert [a.name for a in rep.arms] == ["fewshot", "copy_paste", "generated", "synthetic", "synthetic_fewshot"]
    titles = {a.name: a.title for a in rep.arms}
    assert titles["generated"] == "generated (SD)" and titles["synthetic"] == "hybrid (copy-paste + generated)"
    assert titles["synthetic_fewshot"] == "hybrid (copy-paste + generated) + few-shot"
    assert {a.name: a.n_train for a in rep.arms} == {"fewshot": 6, "copy_paste": 12, "generated": 15, "synthetic": 27,
                                                     "synthetic_fewshot": 33}


def test_without_real_images_there_is_no_fewshot_arm_and_a_given_folder_is_one(tmp_path, real_root, test_root, encoder):
    ds = write_dataset(tmp_path / "noreal", synthetic())
    rep = run(ds, test_root, encoder)
    assert [a.name for a in rep.arms] == ["synthetic"]
    assert any("no real images in the dataset" in n for n in rep.notes)
    rep = run(ds, test_root, encoder, fewshot=real_root)
    assert [a.name for a in rep.arms] == ["fewshot", "synthetic", "synthetic_fewshot"]
    assert rep.arms[0].n_train == 6 and rep.arms[2].n_train == 30


def test_given_fewshot_images_replace_the_datasets_real_ones(ds, tmp_path, test_root, encoder):
    other = image_folder(tmp_path / "other", {"red": 3, "green": 1}, seed=5)
    rep = run(ds, test_root, encoder, fewshot=other)
    assert rep.arms[0].train_counts == {"blue": 0, "green": 1, "red": 3}
    assert any("real images are not used" in n for n in rep.notes)
    assert any("'few-shot real' has no training image of blue" in n for n in rep.notes)
    assert rep.arms[0].metrics.recall["blue"] == 0.0


def test_a_realset_held_out_part_as_test_set(ds, tmp_path, encoder):
    root = image_folder(tmp_path / "photos", {c: 5 for c in CLASSES}, seed=7)
    held = make_set(root, scan(root), lambda label: label, size=SIZE, part="held_out", holdout=0.4, seed=3)
    rep = run(ds, held, encoder)
    assert rep.test["counts"] == {c: 2 for c in CLASSES} and "held_out" in rep.test["where"]
    assert rep.arms[1].metrics.accuracy == 1.0


# -- labels ------------------------------------------------------------------------------------------

def test_labels_outside_the_test_set_are_left_out_with_notes(tmp_path, test_root, encoder):
    colours = {**COLOURS, "yellow": (0.9, 0.85, 0.1)}
    items = synthetic() + [synthetic_item(200 + i, "red", rgb=(0.5, 0.1, 0.6)) for i in range(3)]
    for i, it in enumerate(items[-3:]):
        it.label = "purple"
    ds = write_dataset(tmp_path / "ds", items)
    test = image_folder(tmp_path / "t2", {"red": 2, "green": 2, "yellow": 2}, seed=4, colours=colours)
    rep = run(ds, test, encoder)
    assert rep.classes == ("green", "red", "yellow")
    assert rep.overlap["common"] == ["green", "red"] and rep.overlap["dataset_labels"] == ["blue", "green", "purple", "red"]
    assert any("'blue' (8 accepted images) is not in the test set" in n for n in rep.notes)
    assert any("'purple' (3 accepted images) is not in the test set" in n for n in rep.notes)
    assert any("test class 'yellow' has no image in the dataset" in n for n in rep.notes)
    syn = rep.arms[0]
    assert syn.train_counts == {"green": 8, "red": 8, "yellow": 0}
    assert syn.metrics.recall == {"green": 1.0, "red": 1.0, "yellow": 0.0}
    assert syn.metrics.accuracy == pytest.approx(4 / 6)


def test_no_class_in_common_is_refused(ds, tmp_path, encoder):
    test = image_folder(tmp_path / "t", {"red": 1}, seed=1)
    (test / "red").rename(test / "crimson")
    with pytest.raises(EvaluationError, match=r"no class in common between the dataset \(blue, green, red\) and "
                                              r"the test set \(crimson\)"):
        run(ds, test, encoder)
    assert not (ds / "report").exists()


def test_a_class_without_test_image_is_refused_by_name(ds, tmp_path, encoder):
    root = image_folder(tmp_path / "photos", {"red": 3, "green": 3, "blue": 1}, seed=7)
    held = make_set(root, scan(root), lambda label: label, size=SIZE, part="held_out", holdout=0.4, seed=3)
    with pytest.raises(EvaluationError, match="class 'blue' has no test image"):
        run(ds, held, encoder)
    with pytest.raises(EvaluationError, match="classes 'violet', 'cyan' have no test image"):
        run(ds, root, encoder, classes=["red", "violet", "cyan"])
    (root / "blue" / "blue_0.png").unlink()                        # an empty class folder
    with pytest.raises(EvaluationError, match=r"test set: .*blue: class folder holds no image"):
        run(ds, root, encoder)


def test_an_explicit_class_list_restricts_the_classes(ds, test_root, encoder):
    rep = run(ds, test_root, encoder, classes=["red", "blue"])
    assert rep.classes == ("red", "blue") and rep.test["counts"] == {"red": 4, "blue": 4}
    assert any("left out: green" in n for n in rep.notes)


# -- bad files -----------------------------------------------------------------------------------------

def test_a_corrupt_test_image_is_named(ds, test_root, encoder):
    bad = test_root / "green" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    with pytest.raises(EvaluationError) as e:
        run(ds, test_root, encoder)
    assert e.value.path == bad and str(e.value).startswith(f"{bad}: image cannot be used:")
    assert not (ds / "report").exists()


def test_a_corrupt_dataset_image_is_named(tmp_path, test_root, encoder):
    ds = write_dataset(tmp_path / "ds", synthetic(stored_embedding=None))
    rec = next(r for r in live_records(ds) if r["decision"] == "accepted")
    (ds / rec["file"]).write_bytes(b"garbage")
    with pytest.raises(EvaluationError, match="dataset image cannot be used: is not an image file") as e:
        run(ds, test_root, encoder)
    assert e.value.path == ds / rec["file"]


def test_a_test_image_that_is_also_a_training_image_is_refused(ds, real_root, test_root, encoder):
    with pytest.raises(EvaluationError, match=r"6 test photo\(s\) are also few-shot training images \(by pixels 6, "
                                              r"by embedding 0\): .*blue_0.png = dataset image images/blue/"):
        run(ds, real_root, encoder)              # the dataset's real images are the test set
    with pytest.raises(EvaluationError, match=r"12 test photo\(s\) .* = few-shot image .*same decoded pixels"):
        run(ds, test_root, encoder, fewshot=test_root)
    assert not (ds / "report").exists()


def test_a_test_photo_saved_again_as_png_is_found_by_its_pixels(ds, tmp_path, test_root, encoder):
    """The case the file-bytes check missed (issue #27): a real test photo (a JPEG) decoded and saved
    again as PNG, identical pixels, other bytes, among the few-shot images."""
    from skimage import data
    jpg = test_root / "red" / "coffee.jpg"
    Image.fromarray(data.coffee()).resize((96, 64)).save(jpg, quality=90)
    few = image_folder(tmp_path / "few", {c: 2 for c in CLASSES}, seed=9)
    with Image.open(jpg) as im:
        im.convert("RGB").save(few / "red" / "copy.png")
    assert hashlib.sha256(jpg.read_bytes()).digest() != hashlib.sha256((few / "red" / "copy.png").read_bytes()).digest()
    with pytest.raises(EvaluationError) as e:
        run(ds, test_root, encoder, fewshot=few)
    assert e.value.path == jpg
    assert str(e.value) == (f"{jpg}: 1 test photo(s) are also few-shot training images (by pixels 1, by embedding 0): "
                            f"{jpg} = few-shot image {few / 'red' / 'copy.png'} (same decoded pixels); the test set must "
                            "be held out from the few-shot images")
    assert not (ds / "report").exists()
    # re-compressed (other pixels): a near-duplicate embedding; with that rule off it runs
    (few / "red" / "copy.png").unlink()
    with Image.open(jpg) as im:
        im.convert("RGB").save(few / "red" / "copy.jpg", quality=80)
    with pytest.raises(EvaluationError, match=r"\(by pixels 0, by embedding 1\): .*coffee.jpg = few-shot image "
                                              r".*copy.jpg \(near-duplicate embedding, centred cosine 0\.99"):
        run(ds, test_root, encoder, fewshot=few)
    rep = run(ds, test_root, encoder, fewshot=few, leak_cosine=1.01)
    assert rep.leakage["rule_embedding"] == "no embedding rule (leak_cosine > 1)"
    with pytest.raises(EvaluationError, match="leak_cosine must be a number in 0.5..1.01"):
        run(ds, test_root, encoder, fewshot=few, leak_cosine=2)


def test_the_leakage_check_is_reported(ds, test_root, encoder):
    rep = run(ds, test_root, encoder)
    assert rep.leakage == {"test": 12, "fewshot": 6, "rule_pixels": "same decoded pixels at 64 px",
                           "rule_embedding": "centred embedding cosine >= 0.99", "found": []}
    assert ("leakage check: 12 test photos vs 6 few-shot images by decoded pixels and centred embedding cosine >= 0.99: "
            "none found") in rep.text()
    assert json.loads((ds / "report" / "evaluation.json").read_text())["leakage"]["fewshot"] == 6


def test_not_a_dataset_and_bad_arguments(tmp_path, test_root, encoder):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetFormatError, match="not a DTGen dataset"):
        run(tmp_path / "plain", test_root, encoder)
    with pytest.raises(EvaluationError, match="no such dataset folder"):
        run(tmp_path / "missing", test_root, encoder)
    with pytest.raises(EvaluationError, match="folder of real images does not exist"):
        run(write_dataset(tmp_path / "ds", synthetic(1, 0)), tmp_path / "nope", encoder)
    with pytest.raises(EvaluationError, match="encode returned shape"):
        run(tmp_path / "ds", test_root, lambda images: np.zeros((1, 3)))
    with pytest.raises(EvaluationError, match="seed must be an integer"):
        run(tmp_path / "ds", test_root, encoder, seed="1")


# -- features -------------------------------------------------------------------------------------------

def test_stored_embeddings_of_another_model_are_not_used(tmp_path, test_root, encoder):
    ds = write_dataset(tmp_path / "ds", synthetic(stored_embedding="random"))
    rep = run(ds, test_root, encoder)
    assert rep.features["stored"] == 0 and rep.features["encoded_records"] == 24
    assert any("stored embeddings do not match the encoder" in n for n in rep.notes)
    assert encoder.images == 24 + 12                               # the 8 checked ones are not encoded twice
    assert rep.arms[0].metrics.accuracy == 1.0


def test_without_stored_embeddings_images_are_encoded_and_the_report_says_so(tmp_path, test_root, encoder):
    ds = write_dataset(tmp_path / "ds", synthetic(stored_embedding=None))
    rep = run(ds, test_root, encoder)
    assert rep.features["stored"] == 0 and rep.features["encoded_records"] == 24
    assert any("no stored embedding used" in n for n in rep.notes)


def test_feature_source_caches_and_batches(ds, test_root, encoder):
    src = FeatureSource(ds, encoder, image_size=SIZE, batch_size=5, use_stored=False)
    recs = [r for r in live_records(ds) if r["decision"] == "accepted"]
    a = src.for_records(recs)
    b = src.for_records(recs[::-1])
    assert a.shape == (30, DIM) and np.array_equal(a[::-1], b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0)
    assert encoder.images == 30 and encoder.calls == 6
    paths = [im.path for im in scan(test_root)]
    assert src.for_files(paths + paths[:2]).shape == (14, DIM) and encoder.images == 42


# -- nothing but report/ ----------------------------------------------------------------------------------

def test_nothing_is_written_into_the_dataset_except_report(ds, test_root, encoder):
    before = tree_state(ds)
    run(ds, test_root, encoder, sweep=True)
    after = tree_state(ds)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed and all(k.startswith("report/") for k in changed), changed
    assert sorted(changed) == ["report/confusion_fewshot.png", "report/confusion_synthetic.png",
                               "report/confusion_synthetic_fewshot.png", "report/evaluation.json"]
    # a second run with fewer arms removes the confusion plots of arms that are gone
    run(ds, test_root, encoder, fewshot=[])
    assert sorted(p.name for p in (ds / "report").iterdir()) == ["confusion_synthetic.png", "evaluation.json"]


def test_write_report_false_writes_nothing(ds, test_root, encoder):
    before = tree_state(ds)
    rep = run(ds, test_root, encoder, write_report=False)
    assert tree_state(ds) == before and rep.report_json is None and rep.plot_files == {}
