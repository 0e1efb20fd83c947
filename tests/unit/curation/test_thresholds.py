"""Each threshold method against its closed form; registry and parameter errors."""
import numpy as np
import pytest
from dtgen.nodes.scoring.errors import ClipFilterError
from dtgen.nodes.curation.thresholds import METHODS, ThresholdMethod, get_method

SCORES = np.array([0.20, 0.25, 0.26, 0.27, 0.28, 0.29, 0.30, 0.31, 0.32, 0.40])


def test_mean_std_uses_population_std():
    m, s = SCORES.mean(), np.sqrt(((SCORES - SCORES.mean()) ** 2).mean())
    assert get_method("mean_std").threshold(SCORES) == pytest.approx(m - 1.5 * s)
    assert get_method("mean_std", k=2).threshold(SCORES) == pytest.approx(m - 2 * s)


def test_median_mad():
    # median 0.285; |x - median| sorted: .005 .005 .015 .015 .025 .025 .035 .035 .085 .115 -> MAD .025
    assert get_method("median_mad").threshold(SCORES) == pytest.approx(0.285 - 2.5 * 1.4826 * 0.025)
    assert get_method("median_mad", k=3).threshold(SCORES) == pytest.approx(0.285 - 3 * 1.4826 * 0.025)


def test_median_mad_zero_mad_falls_back_with_note():
    scores = np.array([0.3, 0.3, 0.3, 0.3, 0.1])
    thr, note = get_method("median_mad", k=2).threshold_with_note(scores)
    assert thr == pytest.approx(0.3 - 2 * 1.2533 * 0.04)
    assert "MAD is 0" in note


def test_percentile_keeps_top_p_percent():
    scores = np.arange(1, 101, dtype=float)
    thr = get_method("percentile", p=90).threshold(scores)
    assert thr == pytest.approx(10.9)           # numpy linear interpolation of the 10th percentile
    assert (scores >= thr).sum() == 90
    assert get_method("percentile", p=100).threshold(scores) == 1.0


def test_fixed():
    assert get_method("fixed", value=0.31).threshold(SCORES) == 0.31


def test_gmm_finds_boundary_between_two_groups():
    rng = np.random.default_rng(0)
    low, high = rng.normal(0.15, 0.01, 30), rng.normal(0.30, 0.01, 70)
    thr, note = get_method("gmm").threshold_with_note(np.concatenate([low, high]))
    assert note is None
    assert low.max() < thr < high.min()
    # well separated: EM converges to each group's own moments; solve w1 N1(x) = w2 N2(x) for x
    (w1, m1, v1), (w2, m2, v2) = [(g.size / 100, g.mean(), g.var()) for g in (low, high)]
    quad = [1 / (2 * v2) - 1 / (2 * v1), m1 / v1 - m2 / v2,
            m2**2 / (2 * v2) - m1**2 / (2 * v1) + np.log(w1 / w2) - 0.5 * np.log(v1 / v2)]
    closed = [r.real for r in np.roots(quad) if m1 < r.real < m2]
    assert len(closed) == 1 and thr == pytest.approx(closed[0], abs=1e-4)


@pytest.mark.parametrize("scores,why", [
    ([0.3, 0.2, 0.25], "only 3 score"),
    ([0.3] * 10, "identical"),
    (list(np.random.default_rng(1).normal(0.3, 0.02, 200)), "not bimodal"),
])
def test_gmm_falls_back_to_mean_std(scores, why):
    thr, note = get_method("gmm").threshold_with_note(np.array(scores))
    assert why in note and "fell back to mean_std (k=1.5)" in note
    assert thr == pytest.approx(get_method("mean_std").threshold(np.array(scores)))


def test_registry_and_interface():
    assert set(METHODS) == {"mean_std", "median_mad", "percentile", "fixed", "gmm"}
    for name, cls in METHODS.items():
        method = get_method(name)
        assert isinstance(method, ThresholdMethod) and method.name == name
        assert method.params == {k: float(v) for k, v in cls.defaults.items()}
        assert isinstance(method.threshold(SCORES), float)
    base = get_method("mean_std")
    changed = base.with_params(k=3)
    assert changed.params["k"] == 3 and base.params["k"] == 1.5
    assert get_method(base) is base


@pytest.mark.parametrize("call,match", [
    (lambda: get_method("otsu"), r"unknown threshold method 'otsu'.*mean_std"),
    (lambda: get_method("mean_std", kk=1), r"unknown parameter\(s\) \['kk'\].*\['k'\]"),
    (lambda: get_method("mean_std", k="2"), "k='2' must be a finite number"),
    (lambda: get_method("percentile", p=0), r"p=0 must be in \(0, 100\]"),
    (lambda: get_method("median_mad", k=-1), "k=-1 must be >= 0"),
    (lambda: get_method("gmm", min_points=2), "min_points=2 must be >= 4"),
    (lambda: get_method("fixed").threshold([]), "no scores"),
    (lambda: get_method("fixed").threshold([0.2, np.nan]), "NaN"),
])
def test_bad_parameters_and_inputs(call, match):
    with pytest.raises(ClipFilterError, match=match):
        call()
