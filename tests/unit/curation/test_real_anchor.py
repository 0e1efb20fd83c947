"""The real-anchored score and the decisions on it, against values computed by hand."""
from __future__ import annotations

import numpy as np
import pytest
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.curation.decide import decide, refilter
from dtgen.nodes.curation.real_anchor import (RealBank, bank_summary, check_same_model, class_floors, effective_k,
                                             leave_one_out_scores, real_floor, real_scores, spread, top_k_mean)
from dtgen.nodes.scoring.errors import ClipFilterError

BANK = RealBank.build([("a", "a1", [1, 0, 0]), ("a", "a2", [0.8, 0.6, 0]), ("a", "a3", [0, 1, 0]), ("b", "b1", [0, 0, 2])],
                      "clip-A", "test")


def test_top_k_mean():
    assert top_k_mean(np.array([[0.1, 0.9, 0.5]]), 2) == pytest.approx([0.7])
    assert top_k_mean(np.array([[0.1, 0.9, 0.5]]), 9) == pytest.approx([0.5])


def test_scores_and_margins_by_hand():
    out = real_scores([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1], [1, 0, 0]], ["a", "a", "b", "c"], BANK, top_k=2)
    assert out[0]["real_score"] == pytest.approx(0.9) and out[0]["real_margin"] == pytest.approx(0.9)   # cosines 1, 0.8, 0
    assert out[1]["real_score"] == pytest.approx((0.96 + 0.8) / 2)     # cosines 0.6, 0.48 + 0.48, 0.8
    assert out[0]["real_k"] == 2 and out[0]["real_n"] == 3 and not out[0]["real_weak"]
    assert out[2]["real_score"] == pytest.approx(1.0) and out[2]["real_margin"] == pytest.approx(1.0)   # no cosine to class a
    assert out[2]["real_weak"] and out[2]["real_k"] == 1                 # one photo: allowed, flagged
    assert out[3] == {"real_skipped": "no real photos of class 'c'"}
    top1 = real_scores([[0.6, 0.8, 0]], ["a"], BANK, top_k=1)[0]
    assert top1["real_score"] == pytest.approx(0.96)


def test_k_is_at_most_one_less_than_the_photos_as_in_leave_one_out():
    # k = 9 with 3 photos averages the best 2 (what a photo scored against the other two has), not all 3
    out = real_scores([[1, 0, 0]], ["a"], BANK, top_k=9)[0]
    assert out["real_k"] == 2 and out["real_score"] == pytest.approx(0.9)
    assert [effective_k(7, n) for n in (1, 2, 3, 8, 20)] == [1, 1, 2, 7, 7]


def test_one_photo_counts_once_whatever_its_source():
    bank = RealBank.build([("a", "same", [1, 0]), ("a", "same", [1, 0])], "m", "x")
    bank.add([("a", "same", [1, 0]), ("a", "other", [0, 1])], "m", "y")
    assert bank.counts() == {"a": 2}


def test_another_clip_is_refused_naming_both():
    with pytest.raises(ClipFilterError, match="clip-A.*clip-B"):
        check_same_model(BANK, "clip-B")
    with pytest.raises(ClipFilterError, match=r"\[3\] dimensions, the images' 512"):
        check_same_model(BANK, None, 512)
    with pytest.raises(ClipFilterError, match="clip-B.*clip-A"):
        BANK.add([("a", "z", [1, 0, 0])], "clip-B", "the dataset")
    check_same_model(BANK, "clip-A", 3)   # the same model passes


def test_bad_top_k_is_one_line():
    with pytest.raises(ClipFilterError, match="real_top_k=0"):
        real_scores([[1, 0, 0]], ["a"], BANK, top_k=0)


def test_summary_says_skipped_and_why_or_flags_weak_and_missing_classes():
    assert bank_summary(None, ["a"], "no real photos: connect real_images") == [
        "real-anchored check skipped: no real photos: connect real_images"]
    lines = bank_summary(BANK, ["a", "b", "c"])
    assert "b: 1 real photo (weak anchor)" in lines and "c: no real photos, decided on the text score only" in lines


def items(real):
    out = []
    for i, (text, r) in enumerate(zip([0.3, 0.3, 0.3, 0.1], real)):
        extra = {} if r is None else {"real_score": r}
        out.append(ScoredItem(image=np.zeros((2, 2, 3)), label="a", prompt="p", score=text, extra=extra))
    return out


@pytest.mark.parametrize("basis, accepted, reasons", [
    ("text", [True, True, True, False], ["ok", "ok", "ok", "below_threshold"]),
    ("real", [True, True, False, True], ["ok", "ok", "below_real_threshold", "ok"]),
    ("both", [True, True, False, False], ["ok", "ok", "below_real_threshold", "below_threshold"]),
])
def test_decide_on_text_real_or_both(basis, accepted, reasons):
    batch = decide(items([0.9, 0.9, 0.2, 0.9]), "fixed", min_count=1, basis=basis)   # both thresholds 0.25
    assert [it.accepted for it in batch.items] == accepted and [it.reason for it in batch.items] == reasons
    if basis == "text":
        assert all("decided_on" not in it.extra for it in batch.items)      # exactly as before
    else:
        assert {it.extra["decided_on"] for it in batch.items} == {basis}
        assert batch.config["real_thresholds"] == {"a": 0.25}


def test_a_class_without_real_scores_is_decided_on_text_and_says_so():
    batch = decide(items([None] * 4), "fixed", min_count=1, basis="real")
    assert [it.accepted for it in batch.items] == [True, True, True, False]
    assert {it.extra["decided_on"] for it in batch.items} == {"text"}
    assert "no real photos" in batch.config["real_skipped"]["a"]


def test_the_real_threshold_uses_the_method_over_history_and_run():
    batch = decide(items([0.5, 0.6, 0.7, 0.8]), "mean_std", min_count=1, basis="real",
                   real_history={"a": [0.1, 0.2]})
    pop = np.array([0.1, 0.2, 0.5, 0.6, 0.7, 0.8])
    assert batch.config["real_thresholds"]["a"] == pytest.approx(pop.mean() - 1.5 * pop.std())


def test_refilter_reads_stored_real_scores_and_records_the_basis():
    recs = [{"label": "a", "score": 0.3, "extra": {"real_score": 0.1}}, {"label": "a", "score": 0.3, "real_score": 0.9}]
    out = refilter(recs, "fixed", min_count=1, basis="both").records
    assert [r["accepted"] for r in out] == [False, True]
    assert out[0]["reason"] == "below_real_threshold" and out[0]["extra"]["decided_on"] == "both"
    with pytest.raises(ClipFilterError, match="decide_on='sometimes'"):
        refilter(recs, "fixed", basis="sometimes")


# four photos of class "q" on the unit circle: pairwise cosines a1a2 0.8, a1a3 0.6, a1a4 0, a2a3 0.96, a2a4 0.6, a3a4 0.8
FOUR = [[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1]]


def test_leave_one_out_scores_by_hand():
    # top-2 of the other three: a1 (0.8+0.6)/2, a2 (0.96+0.8)/2, a3 (0.96+0.8)/2, a4 (0.8+0.6)/2
    assert leave_one_out_scores(np.array(FOUR), top_k=2) == pytest.approx([0.7, 0.88, 0.88, 0.7])
    # k clipped to n - 1 = 3: a1 (0.8+0.6+0)/3; never the photo's own cosine 1.0
    assert leave_one_out_scores(np.array(FOUR), top_k=9)[0] == pytest.approx(1.4 / 3)
    assert leave_one_out_scores(np.array([[1, 0]]), top_k=3).size == 0


def test_the_floor_is_min_minus_slack_times_the_spread_below_the_median():
    loo = [0.7, 0.88, 0.88, 0.7]                       # min 0.7, median 0.79: spread 0.09
    assert spread(loo) == pytest.approx(0.09) and spread([0.9, 0.8]) is None
    assert real_floor(loo, slack=1.0) == pytest.approx(0.7 - 0.09)
    assert real_floor(loo, slack=0.0) == pytest.approx(0.7)
    assert real_floor(loo, slack=2.0) == pytest.approx(0.7 - 0.18)
    assert real_floor([0.9, 0.8], slack=1.0) is None   # fewer than 3 photos: no floor
    # a typical spread wider than the class's own widens it: 0.79 - 2 * 0.2; a narrower one does not
    assert real_floor(loo, slack=1.0, typical_spread=0.2) == pytest.approx(0.39)
    assert real_floor(loo, slack=1.0, typical_spread=0.01) == pytest.approx(0.61)


def test_a_class_of_near_alike_photos_gets_the_classes_typical_spread_not_its_own():
    # class "q": FOUR (spread 0.09 at k = 2); class "t": three photos at 10, 11 and 12 degrees (cosines
    # cos 1 = 0.99985, cos 2 = 0.99939; leave-one-out top-2: 0.99962, 0.99985, 0.99962: spread 0)
    deg = np.deg2rad([10, 11, 12])
    tight = [[np.cos(a), np.sin(a)] for a in deg]
    bank = RealBank.build([("q", f"q{i}", v) for i, v in enumerate(FOUR)]
                          + [("t", f"t{i}", v) for i, v in enumerate(tight)] + [("a", "a1", [1, 0])], "m", "test")
    floors = class_floors(bank, top_k=2, slack=1.0)
    loo_t = leave_one_out_scores(np.array(tight), top_k=2)
    assert spread(loo_t) == pytest.approx(0.0, abs=1e-6)
    typical = (0.09 + spread(loo_t)) / 2                # the mean over the classes with a floor ("a" has none)
    assert floors["t"] == pytest.approx(np.median(loo_t) - 2 * typical)
    assert floors["q"] == pytest.approx(0.79 - 2 * 0.09)   # its own spread is the wider one
    assert floors["a"] is None
    # without the typical spread, "t" would reject an image at 14 degrees, 2 degrees from its nearest photo
    near = real_scores([[np.cos(np.deg2rad(14)), np.sin(np.deg2rad(14))]], ["t"], bank, top_k=2, floor_slack=1.0)[0]
    assert near["real_score"] < real_floor(loo_t, 1.0) and near["real_score"] >= near["real_floor"]


def test_real_scores_carry_the_class_floor_and_none_with_few_photos():
    bank = RealBank.build([("q", f"q{i}", v) for i, v in enumerate(FOUR)] + [("a", "a1", [1, 0]), ("a", "a2", [0, 1])],
                          "m", "test")
    out = real_scores([[1, 0], [1, 0]], ["q", "a"], bank, top_k=2)     # default slack 1: 0.79 - 2 * 0.09
    assert out[0]["real_floor"] == pytest.approx(0.61) and out[1]["real_floor"] is None
    assert real_scores([[1, 0]], ["q"], bank, top_k=2, floor_slack=0.0)[0]["real_floor"] == pytest.approx(0.7)
    with pytest.raises(ClipFilterError, match="real_floor_slack=-1"):
        real_scores([[1, 0]], ["q"], bank, floor_slack=-1)
    assert "a: 2 real photos, too few for a calibrated floor (3 needed)" in bank_summary(bank, ["q", "a"])


def calibrated_items(real, floor):
    out = items(real)
    for it in out:
        if "real_score" in it.extra:
            it.extra["real_floor"] = floor
    return out


@pytest.mark.parametrize("basis, accepted, reasons", [
    ("real_calibrated", [True, True, False, True], ["ok", "ok", "below_real_threshold", "ok"]),
    ("both_calibrated", [True, True, False, False], ["ok", "ok", "below_real_threshold", "below_threshold"]),
])
def test_calibrated_bases_use_the_real_photos_floor_not_the_generated_scores(basis, accepted, reasons):
    # real scores 0.9, 0.65, 0.5, 0.9 against the floor 0.61; text 0.3, 0.3, 0.3, 0.1 against fixed 0.25
    batch = decide(calibrated_items([0.9, 0.65, 0.5, 0.9], 0.61), "fixed", min_count=1, basis=basis)
    assert [it.accepted for it in batch.items] == accepted and [it.reason for it in batch.items] == reasons
    assert {it.extra["decided_on"] for it in batch.items} == {basis}
    assert batch.config["real_thresholds"] == {"a": pytest.approx(0.61)}
    assert batch.items[0].extra["real_threshold"] == pytest.approx(0.61)
    # mean_std over the generated real scores cuts at 0.7375 - 1.5 * 0.1709 = 0.481 and keeps 0.5 ...
    plain = decide(items([0.9, 0.65, 0.5, 0.9]), "mean_std", min_count=1, basis="real")
    assert plain.config["real_thresholds"]["a"] == pytest.approx(0.7375 - 1.5 * np.std([0.9, 0.65, 0.5, 0.9]))
    assert plain.items[2].accepted
    # ... the calibrated floor ignores that distribution, and earlier real scores too
    batch = decide(calibrated_items([0.9, 0.65, 0.5, 0.9], 0.61), "mean_std", min_count=1, basis=basis,
                   real_history={"a": [0.0, 0.0]})
    assert batch.items[2].reason == "below_real_threshold" and batch.items[1].accepted


def test_a_class_without_a_floor_falls_back_to_the_method_and_says_so():
    batch = decide(items([0.9, 0.9, 0.2, 0.9]), "fixed", min_count=1, basis="real_calibrated")
    assert [it.accepted for it in batch.items] == [True, True, False, True]
    assert {it.extra["decided_on"] for it in batch.items} == {"real"}
    assert "fewer than 3 real photos" in batch.config["real_calibration_skipped"]["a"]
    batch = decide(items([0.9, 0.9, 0.2, 0.9]), "fixed", min_count=1, basis="both_calibrated")
    assert {it.extra["decided_on"] for it in batch.items} == {"both"}


def test_refilter_reads_the_stored_floor_and_refuses_a_bad_one():
    recs = [{"label": "a", "score": 0.3, "extra": {"real_score": 0.6, "real_floor": 0.61}},
            {"label": "a", "score": 0.3, "real_score": 0.62, "real_floor": 0.61}]
    out = refilter(recs, "fixed", min_count=1, basis="real_calibrated").records
    assert [r["accepted"] for r in out] == [False, True]
    assert out[0]["extra"]["decided_on"] == "real_calibrated"
    with pytest.raises(ClipFilterError, match="real_floor 'low' is not a number"):
        refilter([{"label": "a", "score": 0.3, "real_score": 0.6, "real_floor": "low"}], "fixed",
                 basis="real_calibrated")
