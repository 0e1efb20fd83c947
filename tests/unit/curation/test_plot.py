"""Score histogram grid drawn with Pillow: the panels, their header text and axis labels; and the
ranges of the threshold widgets next to them in the editor."""
import math

import numpy as np
import pytest
from dtgen.nodes.curation.plots import (MIN_SPAN, PANEL_H, PANEL_W, axis_labels, axis_range, header_text,
                                        score_histograms, tally)
from dtgen.nodes.curation.thresholds import WIDGET_RANGES, method_from
from dtgen.nodes.scoring.errors import ClipFilterError

RED_LINE = np.array([200, 30, 30])


def _red_columns(img):
    return np.flatnonzero((np.abs(img.astype(int) - RED_LINE).sum(axis=2) < 10).any(axis=0))


def test_one_class_panel_with_threshold_line():
    rng = np.random.default_rng(0)
    scores = rng.normal(0.3, 0.02, 50)
    img = score_histograms({"cup": scores}, {"cup": 0.27}, {"cup": 45}, {"cup": 5})
    assert img.dtype == np.uint8 and img.shape == (PANEL_H, PANEL_W, 3)
    cols = _red_columns(img)
    assert cols.size and cols.max() - cols.min() <= 3          # one thin vertical line
    no_line = score_histograms({"cup": scores}, {}, {}, {})
    assert _red_columns(no_line).size == 0
    assert not np.array_equal(img, no_line)


def test_threshold_line_position_follows_value():
    scores = np.linspace(0.2, 0.4, 30)
    low = _red_columns(score_histograms({"a": scores}, {"a": 0.22}, {}, {}))
    high = _red_columns(score_histograms({"a": scores}, {"a": 0.38}, {}, {}))
    assert low.mean() < high.mean()


@pytest.mark.parametrize("n_classes,shape", [(4, (PANEL_H, 4 * PANEL_W)), (9, (3 * PANEL_H, 4 * PANEL_W))])
def test_many_classes_make_a_grid(n_classes, shape):
    data = {f"class {i}": np.random.default_rng(i).normal(0.3, 0.02, 20) for i in range(n_classes)}
    img = score_histograms(data, {k: 0.28 for k in data}, {k: 18 for k in data}, {k: 2 for k in data})
    assert img.shape == shape + (3,)
    assert _red_columns(img).size >= 4                          # a line in each column of panels


@pytest.mark.parametrize("scores", [[0.31], [0.25] * 12, []])
def test_degenerate_score_sets(scores):
    img = score_histograms({"x": np.array(scores), "y": np.array([0.2, 0.3])},
                           {"x": 0.25, "y": 0.25}, {"x": len(scores)}, {"x": 0})
    assert img.shape == (PANEL_H, 2 * PANEL_W, 3) and img.std() > 0


def test_no_classes():
    img = score_histograms({}, {}, {}, {})
    assert img.ndim == 3 and img.dtype == np.uint8 and img.min() < 255


# ---- the header line and the axis labels (the text of a panel, without OCR)
@pytest.mark.parametrize("counts,expected", [
    ((45, 5), "n=50  kept 45 / rejected 5  thr 0.270"),
    ((12, None), "n=50  kept 12 / rejected 0  thr 0.270"),      # nothing rejected: 0, not '?'
    ((None, 3), "n=50  kept 0 / rejected 3  thr 0.270"),
    ((None, None), "n=50  thr 0.270"),                          # history only: no counts at all
])
def test_header_gives_real_counts_or_none(counts, expected):
    assert header_text(50, 0.27, *counts) == expected
    assert "?" not in header_text(50, None, *counts)


def test_header_of_the_filter_plot_has_no_question_mark():
    """The filter's plot: a class only in the history, and a class whose run kept everything."""
    entries = [("old", 0.3, None, None), ("old", 0.31, None, None),
               ("cup", 0.29, None, None), ("cup", 0.3, None, True), ("cup", 0.32, None, True)]
    scores, _, accepted, rejected = tally(entries)
    assert header_text(scores["old"].size, 0.25, accepted.get("old"), rejected.get("old")) == "n=2  thr 0.250"
    assert header_text(scores["cup"].size, 0.25, accepted.get("cup"), rejected.get("cup")) == \
        "n=3  kept 2 / rejected 0  thr 0.250"


@pytest.mark.parametrize("scores,thr", [
    ([0.31], None), ([0.31], 0.31), ([0.25] * 12, 0.25), ([0.2500, 0.2502], None), ([0.2501, 0.2503], 0.2502),
    ([-1.0], None), ([1.0, 1.0], 1.0), ([0.2, 0.4], 0.25), ([1e6], None),
])
def test_axis_ends_differ(scores, thr):
    lo, hi = axis_range(np.array(scores), thr)
    assert hi - lo >= MIN_SPAN * 0.999 and lo <= min(scores) and hi >= max(scores)
    if thr is not None:
        assert lo <= thr <= hi
    start, end = axis_labels(lo, hi)
    assert end is not None and start != end, (start, end)
    assert float(start) == pytest.approx(lo, abs=5e-4) and float(end) == pytest.approx(hi, abs=5e-4)


def test_axis_range_keeps_a_wide_spread_with_a_small_margin():
    lo, hi = axis_range(np.array([0.2, 0.4]), 0.25)
    assert (lo, hi) == pytest.approx((0.19, 0.41))
    assert axis_labels(lo, hi) == ("0.190", "0.410")


def test_axis_labels_gain_decimals_then_fall_back_to_one():
    assert axis_labels(0.25, 0.26) == ("0.250", "0.260")
    assert axis_labels(0.2500, 0.2504) == ("0.2500", "0.2504")
    assert axis_labels(0.25, 0.25 + 1e-9) == ("0.250000", None)   # cannot tell the ends apart: label once
    lo, hi = axis_range(np.array([1e17]), None)                    # below float resolution: still a range
    assert hi > lo


# ---- the threshold widgets offer exactly what the validators accept
# (comfy_types.threshold_inputs builds the widgets of DTGen CLIP Filter and DTGen Dataset Finalize
# from WIDGET_RANGES; it imports ComfyUI, so the dict is tested here and the served widgets in
# tests/integration/test_editor_feedback.py)
READ_BY = {"k": ["mean_std", "median_mad", "gmm"], "keep_percent": ["percentile"], "fixed_threshold": ["fixed"]}


def frontend_resolution(step: float) -> float:
    """The grid the ComfyUI frontend (1.27, useFloatWidget) rounds a float widget to: the decimals
    of its step."""
    return 10.0 ** -max(0, -math.floor(math.log10(step)))


def test_every_numeric_threshold_widget_has_a_range():
    assert list(WIDGET_RANGES) == ["k", "keep_percent", "fixed_threshold", "min_count"]   # widget order
    for spec in WIDGET_RANGES.values():
        assert spec["min"] <= spec["default"] <= spec["max"]


@pytest.mark.parametrize("widget", sorted(READ_BY))
def test_threshold_widget_ends_are_accepted_and_one_step_past_them_refused(widget):
    spec = WIDGET_RANGES[widget]
    res = frontend_resolution(spec["step"])
    for name in READ_BY[widget]:
        for value in (spec["min"], spec["default"], spec["max"]):
            method_from(name, **{widget: value})
        for value in (spec["min"] - res, spec["max"] + res):
            with pytest.raises(ClipFilterError, match="must be"):
                method_from(name, **{widget: value})


def test_keep_percent_starts_at_the_smallest_value_the_widget_can_show():
    spec = WIDGET_RANGES["keep_percent"]
    assert spec["min"] == frontend_resolution(spec["step"]) == 0.1
    with pytest.raises(ClipFilterError, match=r"p=0 must be in \(0, 100\]"):
        method_from("percentile", keep_percent=0.0)


def test_min_count_widget_range_is_accepted_by_decide():
    """min_count is not named by the nodes' validate_inputs, so ComfyUI itself refuses values
    outside the widget's range; every value inside it must pass decide's own check."""
    from dtgen.nodes.common.records import ScoredItem
    from dtgen.nodes.curation.decide import decide

    spec = WIDGET_RANGES["min_count"]
    items = lambda: [ScoredItem(image=np.zeros((1, 1, 3), np.float32), label="a", prompt="p", index=0, score=0.3)]
    for value in (spec["min"], spec["default"], spec["max"]):
        decide(items(), "mean_std", min_count=value)
    with pytest.raises(ClipFilterError, match="min_count"):
        decide(items(), "mean_std", min_count=spec["min"] - 2)
