"""The filter node's plain parts: widget sentinels, class texts, one run scored and decided against
the dataset's history, and the plot tally shared with Finalize."""
from __future__ import annotations

import numpy as np
import pytest
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.curation.filtering import checks_from_widgets, class_texts, filter_run, run_plot
from dtgen.nodes.curation.plots import tally
from dtgen.nodes.curation.thresholds import method_from
from dtgen.nodes.store.writer import DatasetWriter
from support.datasets import make_items


@pytest.mark.parametrize("margin, near, expected", [
    (-1.0, 0.0, (None, None)), (None, None, (None, None)), (0.0, 0.95, (0.0, 0.95)), (0.02, 0.0, (0.02, None)),
])
def test_widget_off_values_become_none(margin, near, expected):
    assert checks_from_widgets(margin, near) == expected


def test_class_texts_prefer_the_packs_clip_text():
    items = [ScoredItem(image=np.zeros((2, 2, 3)), label="plate_clean", prompt="p", metadata={}),
             ScoredItem(image=np.zeros((2, 2, 3)), label="bowl_dirty", prompt="p",
                        metadata={"clip_text": "a dirty bowl"})]
    assert class_texts(items) == {"plate_clean": "a photo of plate clean", "bowl_dirty": "a dirty bowl"}


def test_tally_counts_scores_thresholds_and_decisions():
    scores, thresholds, acc, rej = tally([("a", 0.3, 0.25, True), ("a", 0.2, 0.26, False), ("b", 0.4, None, None),
                                          ("b", None, None, True)])
    assert {k: list(v) for k, v in scores.items()} == {"a": [0.3, 0.2], "b": [0.4]}
    assert thresholds == {"a": 0.26} and acc == {"a": 1, "b": 1} and rej == {"a": 1}


def test_one_run_is_decided_against_the_stored_history(tmp_path, bundle):
    ds = tmp_path / "ds"
    stored = make_items(range(12), labels=("cat",))
    for it in stored:
        it.score, it.accepted = 0.9, True      # a history of high scores raises the bar
    with DatasetWriter(ds) as w:
        w.write(stored)
    rng = np.random.default_rng(0)
    items = [ScoredItem(image=rng.random((32, 32, 3), dtype=np.float32), label="cat", prompt="a cat",
                        metadata={"index": 100 + i}) for i in range(4)]
    method = method_from("mean_std", k=1.0)
    batch, history = filter_run(bundle, items, method, text_side="prompt", min_count=1, dataset_dir=ds)
    assert list(history) == ["cat"] and len(history["cat"]) == 12
    assert all(it.score is not None and it.embedding is not None for it in batch.items)
    alone, _ = filter_run(bundle, [ScoredItem(image=it.image, label="cat", prompt="a cat") for it in items], method,
                          text_side="prompt", min_count=1, dataset_dir=None)
    assert batch.thresholds["cat"] > alone.thresholds["cat"]   # history joined the population
    assert not any(it.accepted for it in batch.items)          # random-CLIP scores are far below 0.9
    image = run_plot(batch, history)
    assert image.dtype == np.uint8 and image.ndim == 3


def test_filter_summary_gives_kept_counts_and_thresholds():
    from dtgen.nodes.common.records import ScoredBatch
    from dtgen.nodes.curation.decide import decide
    from dtgen.nodes.curation.filtering import filter_summary

    items = [ScoredItem(image=np.zeros((2, 2, 3)), label=lab, prompt="p", score=s)
             for lab, s in [("a", 0.30), ("a", 0.31), ("a", 0.05), ("b", 0.2)]]
    batch = decide(items, method_from("fixed", fixed_threshold=0.25), min_count=1)
    assert isinstance(batch, ScoredBatch)
    assert filter_summary(batch).splitlines() == ["a: kept 2/3, threshold 0.2500 (fixed)",
                                                  "b: kept 0/1, threshold 0.2500 (fixed)"]


def test_repeated_one_image_runs_encode_the_class_text_once(bundle, monkeypatch):
    """One image per queue run: the class text is encoded by the first run only, and every run's
    scores equal those of scoring without the process-wide text memo."""
    from dtgen.nodes.scoring import similarity

    rng = np.random.default_rng(1)
    images = [rng.random((40, 40, 3), dtype=np.float32) for _ in range(3)]
    meta = {"clip_text": "a photo of a striped cat"}
    method = method_from("fixed", fixed_threshold=0.0)
    calls = []
    real = similarity.encode_text_tokens
    monkeypatch.setattr(similarity, "encode_text_tokens", lambda m, t: calls.append(t.shape[0]) or real(m, t))
    runs = [filter_run(bundle, [ScoredItem(image=im, label="cat", prompt="a cat", metadata=dict(meta))], method,
                       text_side="class_text", min_count=1, margin=0.0)[0].items[0] for im in images]
    assert len(calls) <= 1   # 0 if an earlier test of this process encoded the same text already
    for im, got in zip(images, runs):
        plain = ScoredItem(image=im, label="cat", prompt="a cat", metadata=dict(meta))
        similarity.score_items(bundle, [plain], text_side="class_text", class_texts={"cat": meta["clip_text"]})
        assert got.score == plain.score and got.extra["class_scores"] == plain.extra["class_scores"]
