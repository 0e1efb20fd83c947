"""The threshold sweep: stored scores re-decided in memory under a grid of settings, a probe per
setting, the best by macro-F1 -> accuracy -> fewer changes; on a constructed dataset whose low-score
"red" images are green ones, so only a threshold that rejects them trains a good classifier."""
from __future__ import annotations

import json

import pytest
from dtgen.nodes.evaluation import EvaluationError, evaluate
from dtgen.nodes.evaluation.metrics import compute
from dtgen.nodes.evaluation.sweep import (
    AS_STORED,
    Setting,
    SettingResult,
    best_of,
    default_grid,
    setting,
)
from dtgen.nodes.store.reader import live_records
from evalkit import (
    CLASSES,
    COLOURS,
    SIZE,
    image_folder,
    synthetic_item,
    tree_state,
    write_dataset,
)


def contaminated(tmp_path, real_root=None):
    """blue, green: 10 good images each (score 0.8-0.9); red: 10 good ones and 14 green images
    labelled red (score 0.1-0.2), all stored accepted; 4 good blue ones stored rejected (0.3)."""
    items, i = [], 0
    for label in CLASSES:
        for n in range(10):
            items.append(synthetic_item(i, label, score=0.8 + 0.01 * n))
            i += 1
    for n in range(14):
        items.append(synthetic_item(i, "red", rgb=COLOURS["green"], score=0.1 + 0.005 * n))
        i += 1
    for n in range(4):
        items.append(synthetic_item(i, "blue", score=0.3, accepted=False))
        i += 1
    return write_dataset(tmp_path / "ds", items, real_root)


GRID = [Setting(AS_STORED), setting("fixed", value=0.85), setting("fixed", value=0.5), setting("fixed", value=-1.0)]


@pytest.fixture
def test_root(tmp_path):
    return image_folder(tmp_path / "test", {c: 4 for c in CLASSES}, seed=2)


def test_the_sweep_picks_the_setting_that_removes_the_wrong_images(tmp_path, test_root, encoder):
    ds = contaminated(tmp_path)
    before = tree_state(ds)
    rep = evaluate(ds, test_root, encoder, sweep=True, grid=GRID, image_size=SIZE)
    by = {r.setting.name: r for r in rep.sweep.results}
    assert list(by) == ["as stored", "fixed value=0.85", "fixed value=0.5", "fixed value=-1"]
    stored, strict, right, everything = by.values()
    assert stored.changes == 0 and stored.n_train == 44
    assert stored.accepted == {"blue": 10, "green": 10, "red": 24}
    assert stored.metrics.recall["green"] < 0.5 and stored.metrics.macro_f1 < 0.7   # green taken for red
    assert right.changes == 14 and right.accepted == {"blue": 10, "green": 10, "red": 10}
    assert right.metrics.accuracy == 1.0 and right.metrics.macro_f1 == 1.0
    assert strict.metrics.macro_f1 == 1.0 and strict.changes > right.changes        # same score, more changes
    assert everything.changes == 4 and everything.accepted["blue"] == 14 and everything.metrics.macro_f1 < 1
    assert rep.sweep.best is right
    assert rep.best["name"] == "fixed value=0.5" and rep.best["method"] == "fixed"
    assert rep.best["params"] == {"value": 0.5} and rep.best["metrics"]["macro_f1"] == 1.0
    text = rep.text()
    assert "threshold sweep" in text and "fixed value=0.5 *" in text
    assert "best: fixed value=0.5 (macro-F1 1.000, accuracy 100.0 %, 14 decisions changed)" in text
    data = json.loads((ds / "report" / "evaluation.json").read_text())
    assert data["sweep"]["best"] == "fixed value=0.5" and len(data["sweep"]["settings"]) == 4
    # in memory only: the dataset keeps its decisions and files
    changed = {k for k in set(before) | set(tree_state(ds)) if before.get(k) != tree_state(ds).get(k)}
    assert all(k.startswith("report/") for k in changed)
    assert sum(r["decision"] == "accepted" for r in live_records(ds)) == 44


def test_the_default_grid_and_a_sweep_with_the_fewshot_images(tmp_path, test_root, encoder):
    real = image_folder(tmp_path / "real", {c: 2 for c in CLASSES}, seed=1)
    ds = contaminated(tmp_path, real)
    names = [s.name for s in default_grid()]
    assert names == ["as stored", "mean_std k=0.5", "mean_std k=1", "mean_std k=1.5", "mean_std k=2",
                     "median_mad k=2", "median_mad k=2.5", "median_mad k=3", "percentile keep=50",
                     "percentile keep=70", "percentile keep=90"]
    progress = []
    rep = evaluate(ds, test_root, encoder, sweep=True, sweep_with_fewshot=True, image_size=SIZE,
                   progress=lambda done, total: progress.append((done, total)))
    assert [r.setting.name for r in rep.sweep.results] == names
    assert rep.sweep.with_fewshot and all(r.n_train == sum(r.accepted.values()) + 6 for r in rep.sweep.results)
    assert rep.sweep.best is not None and rep.sweep.best.metrics.macro_f1 >= rep.sweep.results[0].metrics.macro_f1
    assert progress[-1] == (1 + 3 + 11, 1 + 3 + 11) and [d for d, _ in progress] == list(range(1, 16))


def test_best_of_breaks_ties_by_accuracy_then_changes_then_grid_order():
    def result(name, f1_pred, changes):
        return SettingResult(Setting(name), 10, {}, changes, compute([0, 0, 1, 1, 2, 2], f1_pred, ("a", "b", "c")))

    worse = result("worse", [0, 1, 1, 1, 2, 0], 0)
    a = result("a", [0, 0, 1, 1, 2, 1], 5)
    b = result("b", [0, 0, 1, 1, 2, 1], 2)
    c = result("c", [0, 0, 1, 1, 2, 1], 2)
    assert best_of([worse, a, b, c]) is b
    assert best_of([SettingResult(Setting("none"), 0, {}, 0, None)]) is None


def test_a_sweep_needs_stored_scores(tmp_path, test_root, encoder):
    items = [synthetic_item(i, CLASSES[i % 3]) for i in range(9)]
    for it in items:
        it.score, it.reason = None, "unfiltered"
    ds = write_dataset(tmp_path / "ds", items)
    with pytest.raises(EvaluationError, match="no scored synthetic image"):
        evaluate(ds, test_root, encoder, sweep=True, image_size=SIZE)
    with pytest.raises(EvaluationError, match="grid of settings is empty"):
        evaluate(contaminated(tmp_path / "x"), test_root, encoder, sweep=True, grid=[], image_size=SIZE)
    with pytest.raises(EvaluationError, match="few-shot images asked, but there are none"):
        evaluate(tmp_path / "x" / "ds", test_root, encoder, sweep=True, sweep_with_fewshot=True, image_size=SIZE)
