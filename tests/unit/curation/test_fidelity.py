"""Fidelity and diversity figures against values computed by hand on points of the unit circle."""
from __future__ import annotations

import math

import numpy as np
import pytest
from dtgen.nodes.curation.fidelity import (class_fidelity, density_coverage, fidelity_line, knn_radii, pca_2d,
                                           precision_recall, vendi)


def at(*degrees) -> np.ndarray:
    return np.array([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])


def chord(degrees: float) -> float:
    return 2 * math.sin(math.radians(degrees) / 2)


REAL = at(0, 10, 20)
FAKE = at(5, 90)


def test_knn_radii_are_the_distance_to_the_kth_neighbour():
    assert knn_radii(REAL, 1) == pytest.approx([chord(10)] * 3)
    assert knn_radii(REAL, 2) == pytest.approx([chord(20), chord(10), chord(20)])
    assert knn_radii(REAL, 5) == pytest.approx(knn_radii(REAL, 2))   # k clipped to n - 1


def test_precision_and_recall_by_hand():
    # real balls (k=1): radius chord(10); 5 deg is chord(5) from 0 and 10 (inside), 90 deg is far
    # fake balls (k=1): radius chord(85) (the other fake); every real point is within chord(15) of 5 deg
    assert precision_recall(REAL, FAKE, k=1) == pytest.approx((0.5, 1.0))


def test_density_and_coverage_by_hand():
    # 5 deg lies in the balls of 0 and 10 (not 20: chord(15) > chord(10)), 90 deg in none
    density, coverage = density_coverage(REAL, FAKE, k=1)
    assert density == pytest.approx(2 / (1 * 2)) and coverage == pytest.approx(2 / 3)


def test_vendi_counts_distinct_directions():
    assert vendi(at(0, 0)) == pytest.approx(1.0)
    assert vendi(at(0, 90)) == pytest.approx(2.0)
    # K/n has eigenvalues 2/3, 1/3
    assert vendi(at(0, 0, 90)) == pytest.approx(math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))))
    many = np.tile(at(0, 90), (3, 1))          # n > D: the D x D route gives the same number
    assert vendi(many) == pytest.approx(2.0)


def test_pca_keeps_the_spread_on_the_first_axis():
    real_xy, fake_xy = pca_2d(at(0, 180), at(0))
    assert real_xy.shape == (2, 2) and fake_xy.shape == (1, 2)
    assert abs(real_xy[0, 0] - real_xy[1, 0]) == pytest.approx(2.0)   # the two real points lie 2 apart on axis 1


def test_too_few_points_are_named_not_guessed():
    fig = class_fidelity(at(0), FAKE)
    assert fig["precision"] is None and fig["density"] is None and "1 real photo" in fig["note"]
    one_fake = class_fidelity(REAL, at(5), k=1)
    assert one_fake["precision"] is None and one_fake["density"] == pytest.approx(2 / (1 * 1))   # in 2 balls
    full = class_fidelity(REAL, FAKE, k=1)
    assert (full["precision"], full["recall"], full["coverage"]) == pytest.approx((0.5, 1.0, 2 / 3))
    assert "precision 0.50, recall 1.00" in fidelity_line("cat", full)
