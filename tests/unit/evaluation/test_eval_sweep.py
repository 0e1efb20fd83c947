"""The threshold sweep: stored scores re-decided in memory under a grid of settings, a probe per
setting, the best by validation macro-F1 -> accuracy -> fewer changes, reported on held-out photos
with a bootstrap interval of its gain over as stored; on a constructed dataset whose low-score
"red" images are green ones, so only a threshold that rejects them trains a good classifier.
``apply_best`` re-decides the dataset only when that gain is above its interval (issue #27)."""
from __future__ import annotations

import json

import pytest
from dtgen.nodes.evaluation import EvaluationError, evaluate
from dtgen.nodes.evaluation.metrics import compute
from dtgen.nodes.evaluation.sweep import (
    AS_STORED,
    Setting,
    SettingResult,
    apply_best,
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
    # 4 test photos per class: 2 to choose on, 2 to report on
    assert rep.sweep.split == {"fraction": 0.5, "seed": 0, "validation": {c: 2 for c in CLASSES},
                               "held_out": {c: 2 for c in CLASSES}}
    for r in by.values():
        assert r.validation.n == 6 and r.metrics.n == 6 and r.correct.shape == (6,)
    assert stored.changes == 0 and stored.n_train == 44
    assert stored.accepted == {"blue": 10, "green": 10, "red": 24}
    assert stored.validation.recall["green"] == 0.0 and stored.metrics.recall["green"] == 0.0   # green taken for red
    assert stored.metrics.accuracy == pytest.approx(4 / 6)
    assert right.changes == 14 and right.accepted == {"blue": 10, "green": 10, "red": 10}
    assert right.validation.macro_f1 == 1.0 and right.metrics.accuracy == 1.0 and right.metrics.macro_f1 == 1.0
    assert strict.validation.macro_f1 == 1.0 and strict.changes > right.changes     # same score, more changes
    assert everything.changes == 4 and everything.accepted["blue"] == 14 and everything.validation.macro_f1 < 1
    assert rep.sweep.best is right and rep.sweep.baseline is stored
    assert rep.best["name"] == "fixed value=0.5" and rep.best["method"] == "fixed"
    assert rep.best["params"] == {"value": 0.5} and rep.best["metrics"]["macro_f1"] == 1.0
    assert rep.best["metrics"]["n_test"] == 6 and rep.best["validation_metrics"]["n_test"] == 6
    # held out: best 6 of 6 right, as stored 4 of 6 (the 2 green photos): d = [0, 0, 1, 1, 0, 0] (by photo);
    # a resample of 6 photos with no green one has probability (4/6)^6 = 0.088 > 0.025: the low end is 0
    iv = rep.sweep.interval
    assert iv.difference == pytest.approx(2 / 6) and iv.low == 0.0 and iv.n == 6 and iv.n_boot == 2000
    assert rep.best["accuracy_best"] == 1.0 and rep.best["accuracy_baseline"] == pytest.approx(4 / 6)
    assert rep.best["apply"] is False and "within the uncertainty" in rep.best["apply_reason"]
    text = rep.text()
    assert "threshold sweep" in text and "fixed value=0.5 *" in text
    assert ("photos: validation 6 photos (blue 2, green 2, red 2), held-out 6 photos (blue 2, green 2, red 2) "
            "(stratified split of the test photos, 50 % to validation, seed 0)") in text
    assert ("best on validation: fixed value=0.5 (val. macro-F1 1.000, 14 decisions changed); held-out accuracy "
            "100.0 %") in text
    assert "apply_best would change nothing: on the held-out photos the best setting differs from as stored by " \
           "+33.3 points (95 % bootstrap interval +0.0 .. " in text
    data = json.loads((ds / "report" / "evaluation.json").read_text())
    assert data["sweep"]["best"] == "fixed value=0.5" and len(data["sweep"]["settings"]) == 4
    assert data["sweep"]["chosen_on"] == "validation" and data["sweep"]["split"]["held_out"]["red"] == 2
    assert data["sweep"]["comparison"]["apply"] is False and data["sweep"]["comparison"]["interval"]["low"] == 0.0
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
        val = compute([0, 0, 1, 1, 2, 2], f1_pred, ("a", "b", "c"))
        held = compute([0, 1, 2], [0, 1, 2], ("a", "b", "c"))             # never used to choose
        return SettingResult(Setting(name), 10, {}, changes, held, val)

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


def test_apply_best_moves_nothing_when_the_gain_is_within_the_interval(tmp_path, test_root, encoder):
    ds = contaminated(tmp_path)
    rep = evaluate(ds, test_root, encoder, sweep=True, grid=GRID, image_size=SIZE)
    before = tree_state(ds)
    assert rep.best["method"] == "fixed" and not rep.best["apply"]     # a better setting, not surely better
    result, line = apply_best(ds, rep.best)
    assert result is None and line.startswith("apply_best: nothing done: on the held-out photos the best setting "
                                              "differs from as stored by +33.3 points")
    assert tree_state(ds) == before
    assert sum(r["decision"] == "accepted" for r in live_records(ds)) == 44
    stored_best = {**rep.best, "method": None, "apply": False, "apply_reason": "x"}
    assert apply_best(ds, stored_best) == (None, "apply_best: nothing done: x")
    assert apply_best(ds, None) == (None, "apply_best: nothing done: no sweep result")


def test_apply_best_re_decides_when_the_held_out_gain_is_above_its_interval(tmp_path, encoder):
    ds = contaminated(tmp_path)
    test = image_folder(tmp_path / "test10", {c: 10 for c in CLASSES}, seed=2)
    rep = evaluate(ds, test, encoder, sweep=True, grid=GRID, image_size=SIZE, seed=0)
    assert rep.sweep.split["validation"] == {c: 5 for c in CLASSES} and rep.sweep.split["held_out"] == {c: 5 for c in CLASSES}
    iv = rep.sweep.interval
    assert rep.best["name"] == "fixed value=0.5" and iv.n == 15 and iv.low > 0 and rep.best["apply"]
    assert iv.difference == pytest.approx(rep.best["accuracy_best"] - rep.best["accuracy_baseline"])
    result, line = apply_best(ds, rep.best)
    assert result.moved == {"to_accepted": 0, "to_rejected": 14}
    assert line == "applied the best setting (fixed value=0.5): {'to_accepted': 0, 'to_rejected': 14}"
    live = live_records(ds)
    assert sum(r["decision"] == "accepted" for r in live) == 30
    assert all(r["decision"] == "rejected" for r in live if r["score"] < 0.5)


def test_the_split_and_bootstrap_follow_the_seed(tmp_path, encoder):
    ds = contaminated(tmp_path)
    test = image_folder(tmp_path / "t", {c: 6 for c in CLASSES}, seed=2)
    a = evaluate(ds, test, encoder, sweep=True, grid=GRID, image_size=SIZE, seed=1, write_report=False)
    b = evaluate(ds, test, encoder, sweep=True, grid=GRID, image_size=SIZE, seed=1, write_report=False)
    assert a.best == b.best and a.sweep.interval == b.sweep.interval
    c = evaluate(ds, test, encoder, sweep=True, grid=GRID, image_size=SIZE, seed=1, validation_fraction=0.34,
                 write_report=False)
    assert c.sweep.split["validation"] == {cl: 2 for cl in CLASSES} and c.sweep.split["held_out"] == {cl: 4 for cl in CLASSES}
    assert c.sweep.interval.n == 12


def test_a_sweep_without_the_stored_setting_still_compares_with_it(tmp_path, test_root, encoder):
    ds = contaminated(tmp_path)
    rep = evaluate(ds, test_root, encoder, sweep=True, grid=GRID[1:], image_size=SIZE)
    assert [r.setting.name for r in rep.sweep.results] == ["fixed value=0.85", "fixed value=0.5", "fixed value=-1"]
    assert rep.sweep.baseline.setting.name == "as stored" and rep.sweep.baseline not in rep.sweep.results
    assert rep.best["accuracy_baseline"] == pytest.approx(4 / 6)


def test_the_sweep_needs_two_test_photos_per_class(tmp_path, encoder):
    ds = contaminated(tmp_path)
    test = image_folder(tmp_path / "t", {"blue": 3, "green": 1, "red": 2}, seed=2)
    with pytest.raises(EvaluationError, match=r"sweep: .*at least 2 test photos per class; too few: 'green' \(1\)"):
        evaluate(ds, test, encoder, sweep=True, grid=GRID, image_size=SIZE)
    with pytest.raises(EvaluationError, match="validation fraction must be a number between 0 and 1"):
        evaluate(ds, test, encoder, sweep=True, grid=GRID, image_size=SIZE, validation_fraction=1.0)
    assert not (ds / "report").exists()
    evaluate(ds, test, encoder, image_size=SIZE)          # without a sweep one photo of a class is enough
