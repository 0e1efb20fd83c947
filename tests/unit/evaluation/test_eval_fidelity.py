"""Evaluate's fidelity lines: per class, the synthetic arm's features against the few-shot real
images' (the same features the probes use; nothing encoded again), in the text and the JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest
from dtgen.nodes.curation.fidelity import class_fidelity
from dtgen.nodes.evaluation import evaluate
from evalkit import CLASSES, SIZE, image_folder, synthetic_item, write_dataset


def test_fidelity_per_class_matches_the_plain_function_on_the_arms_features(tmp_path, encoder, monkeypatch):
    real_root = image_folder(tmp_path / "real", {c: 3 for c in CLASSES}, seed=1)
    items = [synthetic_item(i, label, score=0.8, accepted=True) for i, label in enumerate(CLASSES * 6)]
    ds = write_dataset(tmp_path / "ds", items, real_root)
    test = image_folder(tmp_path / "test", {c: 3 for c in CLASSES}, seed=2)
    rep = evaluate(ds, test, encoder, image_size=SIZE)
    encoded = encoder.images
    assert set(rep.fidelity) == set(CLASSES)
    arms = {a.name: a for a in rep.arms}
    assert rep.fidelity["red"]["n_real"] == arms["fewshot"].train_counts["red"] == 3
    assert rep.fidelity["red"]["n_synthetic"] == arms["synthetic"].train_counts["red"] == 6
    # the same figures as the plain function on the same features
    from dtgen.nodes.evaluation.features import FeatureSource
    from dtgen.nodes.store.reader import live_records

    source = FeatureSource(ds, encoder, image_size=SIZE)
    recs = live_records(ds)
    real = source.for_records([r for r in recs if r["source"] == "real" and r["label"] == "red"])
    syn = source.for_records([r for r in recs if r["source"] != "real" and r["label"] == "red"])
    want = class_fidelity(real, syn)
    for key in ("precision", "recall", "density", "coverage", "vendi_real", "vendi_synthetic"):
        assert rep.fidelity["red"][key] == pytest.approx(want[key], abs=1e-5), key
    assert "red: precision" in rep.text()
    assert json.loads(rep.report_json.read_text())["fidelity"]["red"]["n_real"] == 3
    assert np.isfinite(rep.fidelity["red"]["vendi_real"])
    # the figures encode nothing beyond what the arms did: the same count with them left out
    import dtgen.nodes.evaluation.report as R
    from evalkit import FakeEncoder

    monkeypatch.setattr(R, "_fidelity", lambda *a: {})
    without = FakeEncoder()
    evaluate(ds, test, without, image_size=SIZE, write_report=False)
    assert without.images == encoded
