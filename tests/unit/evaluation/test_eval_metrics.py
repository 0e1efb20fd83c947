"""Metrics against scikit-learn (zero_division=0), the table's shape, and the linear probe: 100 % on
separable features, determinism, one class, bounded iterations, bad input."""
from __future__ import annotations

import numpy as np
import pytest
from dtgen.nodes.evaluation import metrics as M
from dtgen.nodes.evaluation.probe import LinearProbe
from sklearn import metrics as skm

CLASSES = ("apple", "banana", "cherry", "durian")


@pytest.mark.parametrize("y_true, y_pred", [
    # cherry is never predicted; durian has no true sample but is predicted once
    ([0, 0, 0, 1, 1, 1, 2, 2, 2, 0], [0, 1, 0, 1, 1, 0, 0, 1, 3, 0]),
    # durian never appears at all (not true, not predicted): F1 0, counted in the macro mean
    ([0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 0]),
    # everything right
    ([3, 2, 1, 0], [3, 2, 1, 0]),
    # everything wrong
    ([0, 0, 1, 1], [1, 1, 0, 0]),
])
def test_metrics_match_sklearn(y_true, y_pred):
    labels = list(range(len(CLASSES)))
    m = M.compute(y_true, y_pred, CLASSES)
    assert m.accuracy == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m.macro_f1 == pytest.approx(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    recall = skm.recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    precision = skm.precision_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    f1 = skm.f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    assert [m.recall[c] for c in CLASSES] == pytest.approx(list(recall))
    assert [m.precision[c] for c in CLASSES] == pytest.approx(list(precision))
    assert [m.f1[c] for c in CLASSES] == pytest.approx(list(f1))
    assert np.array_equal(m.confusion, skm.confusion_matrix(y_true, y_pred, labels=labels))
    assert m.n == len(y_true) and sum(m.support.values()) == len(y_true)


def test_metrics_as_dict_is_json_ready():
    import json

    d = M.compute([0, 1, 1], [0, 1, 0], ("a", "b")).as_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["confusion"] == [[1, 0], [1, 1]] and d["recall"] == {"a": 1.0, "b": 0.5}


@pytest.mark.parametrize("y_true, y_pred, problem", [
    ([0, 1], [0, 4], "outside 0..3"),
    ([0, 1], [0], "y_true has 2 labels and y_pred 1"),
    ([0.5, 1], [0, 1], "integer class indices"),
    ([[0, 1]], [[0, 1]], "1-D"),
])
def test_metrics_refuse_bad_labels(y_true, y_pred, problem):
    with pytest.raises(ValueError, match=problem):
        M.compute(y_true, y_pred, CLASSES)


def test_table_has_the_seed_table_shape():
    rows = [("few-shot real", 15, M.compute([0, 1, 2, 3], [0, 1, 0, 0], CLASSES)),
            ("synthetic", 400, M.compute([0, 1, 2, 3], [0, 1, 2, 3], CLASSES))]
    text = M.format_table(rows)
    lines = text.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["arm", "n train", "accuracy", "macro-F1",
                                                                    "per-class recall"]
    assert set(lines[1]) <= set("|-:")
    assert len({len(line) for line in lines}) == 1                # aligned columns
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == ["few-shot real", "15", "50.0 %", "0.375", "apple 1.00, banana 1.00, cherry 0.00, durian 0.00"]
    assert [c.strip() for c in lines[3].strip("|").split("|")][:4] == ["synthetic", "400", "100.0 %", "1.000"]


# -- the probe -------------------------------------------------------------------------------------

def _blobs(n_per: int, k: int, d: int, seed: int, spread: float = 0.3):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 3
    y = np.repeat(np.arange(k), n_per)
    return centres[y] + spread * rng.standard_normal((len(y), d)), y


def test_probe_reaches_100_percent_on_separable_features():
    xa, ya = _blobs(60, 5, 64, seed=0)
    test = np.arange(len(ya)) % 3 == 0                 # a third held out
    x, y, xt, yt = xa[~test], ya[~test], xa[test], ya[test]
    probe = LinearProbe().fit(x, y)
    assert (probe.predict(x) == y).all()
    assert (probe.predict(xt) == yt).all()
    assert probe.info["converged"] and probe.info["n_iter"] >= 1
    proba = probe.predict_proba(x)
    assert proba.shape == (200, 5) and np.allclose(proba.sum(1), 1)


def test_probe_keeps_label_values_and_is_deterministic():
    x, y = _blobs(30, 3, 16, seed=1, spread=2.0)       # overlapping: a real optimisation
    y = np.array([7, 3, 11])[y]
    a = LinearProbe().fit(x, y)
    b = LinearProbe(seed=99).fit(x, y)
    assert set(a.predict(x)) <= {3, 7, 11}
    assert np.array_equal(a.coef_, b.coef_) and np.array_equal(a.intercept_, b.intercept_)


def test_probe_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = _blobs(50, 4, 20, seed=2, spread=2.5)
    ours = LinearProbe(c=0.5, tol=1e-8).fit(x, y)
    theirs = LogisticRegression(C=0.5, tol=1e-10, max_iter=5000).fit(StandardScaler().fit_transform(x), y)
    assert np.abs(ours.coef_ - theirs.coef_).max() < 1e-3
    assert (ours.predict(x) == theirs.predict(StandardScaler().fit(x).transform(x))).mean() >= 0.99


def test_probe_with_one_class_predicts_it_and_iterations_are_bounded():
    x, y = _blobs(10, 1, 8, seed=3)
    assert (LinearProbe().fit(x, np.full(10, 4)).predict(x[:3]) == 4).all()
    x, y = _blobs(50, 3, 32, seed=4, spread=3.0)
    probe = LinearProbe(max_iter=1).fit(x, y)
    assert probe.info["n_iter"] == 1 and not probe.info["converged"]


@pytest.mark.parametrize("x, y, problem", [
    (np.zeros((0, 3)), np.zeros(0), "non-empty"),
    (np.zeros((3, 2)), np.zeros(2), "labels must be"),
    (np.full((2, 2), np.nan), np.zeros(2), "NaN"),
])
def test_probe_refuses_bad_input(x, y, problem):
    with pytest.raises(ValueError, match=problem):
        LinearProbe().fit(x, y)
    with pytest.raises(ValueError, match="c must be"):
        LinearProbe(c=0)
