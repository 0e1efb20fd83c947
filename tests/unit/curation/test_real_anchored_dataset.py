"""The real-anchored score through a dataset: the filter run with real photos (few-shot set and
stored real records), their embeddings stored once with the real records, a different CLIP
refused, and Finalize / redecide deciding on it with fidelity figures in the report."""
from __future__ import annotations

import json

import numpy as np
import pytest
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.curation.filtering import filter_run, filter_summary
from dtgen.nodes.curation.finalize import finalize, finalize_summary
from dtgen.nodes.curation.real_images import import_real
from dtgen.nodes.curation.redecide import decide_fn_for
from dtgen.nodes.curation.thresholds import method_from
from dtgen.nodes.fewshot.imageset import scan
from dtgen.nodes.fewshot.realset import make_set
from dtgen.nodes.scoring.errors import ClipFilterError
from dtgen.nodes.store.reader import live_records, load_real_embeddings
from dtgen.nodes.store.writer import DatasetWriter
from PIL import Image
from skimage import data

PHOTOS = {"plate": {"coffee.jpg": data.coffee, "chelsea.png": data.chelsea}, "bowl": {"rocket.jpg": data.rocket}}


@pytest.fixture
def realset(tmp_path):
    root = tmp_path / "real"
    for label, photos in PHOTOS.items():
        for name, photo in photos.items():
            (root / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo()).save(root / label / name)
    return make_set(root, scan(root), lambda label: f"a photo of {label}", size=64, part="all")


def generated(labels, seed=0):
    rng = np.random.default_rng(seed)
    return [ScoredItem(image=rng.random((48, 48, 3), dtype=np.float32), label=label, prompt=f"a {label}",
                       index=i) for i, label in enumerate(labels)]


def test_a_run_with_real_photos_scores_each_image_against_them(tmp_path, bundle, realset):
    items = generated(["plate", "plate", "bowl", "cup"])
    batch, _ = filter_run(bundle, items, method_from("fixed", fixed_threshold=-1.0), text_side="prompt",
                          min_count=1, basis="both", realset=realset)
    plate, bowl, cup = batch.items[0].extra, batch.items[2].extra, batch.items[3].extra
    assert plate["real_n"] == 2 and plate["real_k"] == 1 and not plate["real_weak"]   # k <= n - 1
    assert bowl["real_n"] == 1 and bowl["real_weak"]                      # one photo: allowed, flagged
    assert cup["real_skipped"] == "no real photos of class 'cup'" and cup["decided_on"] == "text"
    # the score is the mean of the top-k cosines to the class's photos, the margin against the other class
    emb = np.stack([it.embedding for it in batch.items])
    real = batch.config["real_embeddings"]
    assert len(real) == 3 and batch.config["real_model"] == plate["clip_model"]
    text = filter_summary(batch)
    assert "bowl: 1 real photo (weak anchor)" in text and "cup: no real photos, decided on the text score only" in text
    assert plate["decided_on"] == "both"
    from dtgen.nodes.fewshot.realset import file_digest
    by_label = {}
    for im in realset.images:
        by_label.setdefault(im.label, []).append(real[file_digest(im.path)])
    own = np.max(np.stack(by_label["plate"]) @ emb[0])                  # k = 1: the nearer plate photo
    other = float((np.stack(by_label["bowl"]) @ emb[0])[0])
    assert plate["real_score"] == pytest.approx(own, abs=1e-5)
    assert plate["real_margin"] == pytest.approx(own - other, abs=1e-5)


def test_without_real_photos_the_run_is_decided_as_before_and_says_why(bundle):
    items = generated(["plate", "plate", "bowl"])
    batch, _ = filter_run(bundle, items, method_from("mean_std"), text_side="prompt", min_count=1, basis="real")
    before, _ = filter_run(bundle, generated(["plate", "plate", "bowl"]), method_from("mean_std"),
                           text_side="prompt", min_count=1)
    assert [it.accepted for it in batch.items] == [it.accepted for it in before.items]
    assert batch.config["real_anchor"][0].startswith("real-anchored check skipped: no real photos")
    assert all(it.extra["real_skipped"].startswith("no real photos: connect real_images") for it in batch.items)
    assert "real-anchored check skipped" in filter_summary(before)


def test_real_embeddings_are_stored_once_and_read_back_not_re_encoded(tmp_path, bundle, realset, monkeypatch):
    ds = tmp_path / "ds"
    batch, _ = filter_run(bundle, generated(["plate"]), method_from("mean_std"), text_side="prompt", min_count=1,
                          realset=realset)
    with DatasetWriter(ds) as w:
        w.write(batch.items)
        import_real(w, realset, embeddings=batch.config["real_embeddings"], clip_model=batch.config["real_model"])
    stored = load_real_embeddings(ds)
    assert sorted(label for label, *_ in stored) == ["bowl", "plate", "plate"]
    assert {model for *_, model in stored} == {batch.config["real_model"]}
    import dtgen.nodes.curation.filtering as F
    monkeypatch.setattr(F, "_encode_realset", lambda *a: pytest.fail("a stored real photo was encoded again"))
    again, _ = filter_run(bundle, generated(["plate"], seed=1), method_from("mean_std"), text_side="prompt",
                          min_count=1, dataset_dir=ds)
    assert again.items[0].extra["real_n"] == 2
    assert "3 from the dataset's real records" in again.config["real_anchor"][0]


def test_real_embeddings_of_another_clip_are_refused_naming_both(tmp_path, bundle):
    ds = tmp_path / "ds"
    photo = ScoredItem(image=np.zeros((8, 8, 3), np.float32), label="plate", prompt="p", accepted=True, reason="real",
                       metadata={"source": "real", "item_id": "real:1", "sha256": "1" * 64},
                       embedding=np.ones(512, np.float32), extra={"clip_model": "ViT-L-14 (other.safetensors, sha256 abc)"})
    with DatasetWriter(ds) as w:
        w.write([photo])
    with pytest.raises(ClipFilterError, match=r"ViT-L-14 \(other.safetensors.*the images' by ViT-B-32"):
        filter_run(bundle, generated(["plate"]), method_from("mean_std"), text_side="prompt", min_count=1,
                   dataset_dir=ds)


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def toy_dataset(ds, model="M"):
    """Real photos of 'a' near e0 (+ one of 'b' near e1); generated 'a' images with equal text
    scores: 8 in the real domain (near e0), 4 off it (near e2)."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(4):
        items.append(ScoredItem(image=np.zeros((8, 8, 3), np.float32), label="a", prompt="p", accepted=True,
                                reason="real", metadata={"source": "real", "item_id": f"real:{i}", "sha256": f"{i}" * 64},
                                embedding=unit([1, 0.1 * rng.standard_normal(), 0.1 * rng.standard_normal(), 0]),
                                extra={"clip_model": model}))
    items.append(ScoredItem(image=np.zeros((8, 8, 3), np.float32), label="b", prompt="p", accepted=True,
                            reason="real", metadata={"source": "real", "item_id": "real:b", "sha256": "b" * 64},
                            embedding=unit([0, 1, 0, 0]), extra={"clip_model": model}))
    for i in range(12):
        off = i >= 8
        vec = unit([0.2 if off else 1, 0.1 * rng.standard_normal(), 1 if off else 0.1 * rng.standard_normal(), 0])
        items.append(ScoredItem(image=rng.random((8, 8, 3), dtype=np.float32), label="a", prompt="p", index=i,
                                score=0.3, threshold=0.2, method="fixed", accepted=True, reason="ok", embedding=vec,
                                extra={"clip_model": model}))
    with DatasetWriter(ds) as w:
        w.write(items)


def test_finalize_decides_on_the_real_score_from_stored_embeddings_and_reports_fidelity(tmp_path):
    ds = tmp_path / "ds"
    toy_dataset(ds)
    rep = finalize(ds, decide_fn=decide_fn_for(method_from("fixed", fixed_threshold=0.8), min_count=1, basis="real"),
                   echo=False)
    gen = sorted((r for r in live_records(ds) if r["source"] != "real"), key=lambda r: r["index"])
    assert [r["decision"] for r in gen] == ["accepted"] * 8 + ["rejected"] * 4
    assert {r["reason"] for r in gen[8:]} == {"below_real_threshold"}
    assert {r["extra"]["decided_on"] for r in gen} == {"real"} and gen[0]["extra"]["real_threshold"] == 0.8
    fig = rep.data["fidelity"]["a"]
    assert fig["n_real"] == 4 and fig["n_synthetic"] == 8 and fig["precision"] is not None
    assert rep.fidelity_plots["a"].is_file() and json.loads(rep.report_json.read_text())["fidelity_plots"]["a"]
    text = finalize_summary(rep)
    assert any(line.startswith("a: precision") for line in text.splitlines())
    assert "b: precision -" in text    # one real photo, no synthetic image: named, not guessed
    # text basis afterwards: the stored text scores (all 0.3) accept every image again
    finalize(ds, decide_fn=decide_fn_for(method_from("fixed", fixed_threshold=0.25), min_count=1), echo=False)
    assert all(r["decision"] == "accepted" for r in live_records(ds))


def test_finalize_decides_on_the_real_photos_own_floor(tmp_path):
    from dtgen.nodes.curation.real_anchor import RealBank, class_floors

    ds = tmp_path / "ds"
    toy_dataset(ds)
    finalize(ds, decide_fn=decide_fn_for(method_from("fixed", fixed_threshold=0.25), min_count=1,
                                         basis="both_calibrated"), echo=False)
    bank = RealBank.build([(label, key, vec) for label, key, vec, _ in load_real_embeddings(ds)], None, "stored")
    floor = class_floors(bank)["a"]                    # from the stored photos, at the pack's defaults
    gen = sorted((r for r in live_records(ds) if r["source"] != "real"), key=lambda r: r["index"])
    assert {r["extra"]["decided_on"] for r in gen} == {"both_calibrated"}
    assert [r["extra"]["real_threshold"] for r in gen] == pytest.approx([floor] * 12)
    assert [r["decision"] for r in gen] == ["accepted" if r["extra"]["real_score"] >= floor else "rejected" for r in gen]
    assert {r["reason"] for r in gen[8:]} == {"below_real_threshold"}       # the 4 off-domain images
    assert sum(r["decision"] == "accepted" for r in gen[:8]) >= 6          # in-domain: noise may put one below


def test_finalize_refuses_real_embeddings_of_another_clip(tmp_path):
    ds = tmp_path / "ds"
    toy_dataset(ds)
    recs = [dict(r, extra={**r["extra"], "clip_model": "N"}) for r in live_records(ds) if r["source"] != "real"]
    from dtgen.nodes.store import manifest
    manifest.append(ds, recs)
    with pytest.raises(ClipFilterError, match="made by M, the images' by N"):
        finalize(ds, decide_fn=decide_fn_for(method_from("fixed"), min_count=1, basis="both"), echo=False)


def test_redecide_command_decides_on_real(tmp_path, capsys):
    from dtgen.runner.cli import main

    ds = tmp_path / "ds"
    toy_dataset(ds)
    assert main(["redecide", str(ds), "--method", "fixed", "--fixed-threshold", "0.8", "--decide-on", "real",
                 "--min-count", "1"]) == 0
    assert sum(r["decision"] == "rejected" for r in live_records(ds)) == 4
    assert main(["redecide", str(ds), "--decide-on", "real", "--real-top-k", "0"]) == 2
    assert "real_top_k=0" in capsys.readouterr().err


def test_a_real_photo_gone_since_the_set_was_made_is_one_line_naming_it(bundle, realset):
    from dtgen.nodes.fewshot.imageset import FewShotError

    gone = realset.images[0].path
    gone.unlink()
    with pytest.raises(FewShotError, match=gone.name):
        filter_run(bundle, generated(["plate"]), method_from("mean_std"), text_side="prompt", min_count=1,
                   realset=realset)
