"""Score histogram grid drawn with Pillow."""
import numpy as np
import pytest
from dtgen.nodes.curation.plots import PANEL_H, PANEL_W, score_histograms

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
