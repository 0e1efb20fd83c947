"""The sweep's honesty and the leakage check as plain functions, against hand-computed values on
small arrays: the stratified validation / held-out split, the paired bootstrap interval of an
accuracy difference, when apply_best may act, and a test photo found among the few-shot images by
decoded pixels or by a near-duplicate embedding (issue #27, item 6)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from dtgen.nodes.evaluation.leakage import (
    EMBEDDING,
    PIXELS,
    Leak,
    centred,
    find_leaks,
    leak_message,
    near_duplicates,
    pixel_digest,
    pixel_key,
    pixel_matches,
)
from dtgen.nodes.evaluation.validation import (
    Interval,
    apply_decision,
    paired_bootstrap,
    split_problem,
    stratified_split,
)
from PIL import Image

# -- the split -------------------------------------------------------------------------------------

LABELS = np.array([0, 0, 0, 0, 1, 1, 1])     # class 0: 4 photos, class 1: 3


def counts(labels, idx):
    return np.bincount(labels[idx], minlength=2).tolist()


@pytest.mark.parametrize("fraction, val, held", [
    (0.5, [2, 1], [2, 2]),        # floor(4 * .5) = 2, floor(3 * .5) = 1
    (0.1, [1, 1], [3, 2]),        # floor gives 0: at least 1 to validation
    (0.9, [3, 2], [1, 1]),        # floor(3.6) = 3, floor(2.7) = 2: at least 1 held out
    (0.75, [3, 2], [1, 1]),
])
def test_stratified_split_counts_per_class(fraction, val, held):
    v, h = stratified_split(LABELS, fraction, seed=0)
    assert counts(LABELS, v) == val and counts(LABELS, h) == held
    assert not set(v) & set(h) and sorted(set(v) | set(h)) == list(range(7))
    assert list(v) == sorted(v) and list(h) == sorted(h)


def test_stratified_split_is_seeded():
    y = np.repeat([0, 1, 2], 10)
    a = stratified_split(y, 0.5, seed=3)
    b = stratified_split(y, 0.5, seed=3)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    others = [stratified_split(y, 0.5, seed=s)[0] for s in range(4, 9)]
    assert any(not np.array_equal(a[0], o) for o in others)
    assert np.bincount(y[a[0]]).tolist() == [5, 5, 5] and np.bincount(y[a[1]]).tolist() == [5, 5, 5]


def test_a_class_with_one_photo_cannot_be_split():
    y = np.array([0, 0, 1, 2, 2])
    assert split_problem(y, ["a", "b", "c"]) == ("the sweep chooses its setting on part of the test photos and "
                                                 "reports it on the rest, so it needs at least 2 test photos per "
                                                 "class; too few: 'b' (1)")
    assert split_problem(np.array([0, 0, 1, 1])) is None
    with pytest.raises(ValueError, match="too few: 1 \\(1\\)"):
        stratified_split(y, 0.5)
    for bad in (0, 1, 1.5, -0.2, True, "0.5"):
        with pytest.raises(ValueError, match="validation fraction must be a number between 0 and 1"):
            stratified_split(LABELS, bad)


# -- the bootstrap ---------------------------------------------------------------------------------

def test_bootstrap_of_a_constant_difference_is_that_constant():
    iv = paired_bootstrap([1, 1, 1], [0, 0, 0], n_boot=500, seed=1)
    assert (iv.difference, iv.low, iv.high) == (1.0, 1.0, 1.0)
    assert (iv.n, iv.n_boot, iv.seed, iv.level) == (3, 500, 1, 0.95)


def test_bootstrap_is_paired():
    # the same photos right and wrong for both: every resample gives 0; an unpaired bootstrap of
    # two accuracies of 0.5 on 4 photos would not
    iv = paired_bootstrap([1, 0, 1, 0], [1, 0, 1, 0], n_boot=1000, seed=0)
    assert (iv.difference, iv.low, iv.high) == (0.0, 0.0, 0.0)


def test_bootstrap_of_two_photos_by_hand():
    # d = [1, 0]: a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4, so the 2.5 %
    # and 97.5 % quantiles are 0 and 1
    iv = paired_bootstrap([1, 0], [0, 0], n_boot=4000, seed=0)
    assert (iv.difference, iv.low, iv.high) == (0.5, 0.0, 1.0)


def test_bootstrap_matches_the_normal_approximation():
    # 100 photos, 60 where a is right and b wrong, 40 where both are right: d is 1 on 60 %, the
    # resampled mean ~ N(0.6, sqrt(0.6 * 0.4 / 100) = 0.049): 95 % interval 0.504 .. 0.696
    a = np.ones(100)
    b = np.r_[np.zeros(60), np.ones(40)]
    iv = paired_bootstrap(a, b, n_boot=20000, seed=0)
    assert iv.difference == pytest.approx(0.6)
    assert iv.low == pytest.approx(0.504, abs=0.011) and iv.high == pytest.approx(0.696, abs=0.011)
    assert paired_bootstrap(a, b, n_boot=20000, seed=0) == iv                    # seeded
    assert iv.text() == f"+60.0 points (95 % bootstrap interval {100 * iv.low:+.1f} .. {100 * iv.high:+.1f}, " \
                        "20000 resamples of 100 photos)"


@pytest.mark.parametrize("kw, match", [
    ({"correct_a": [1, 0], "correct_b": [1]}, "one length"),
    ({"correct_a": [], "correct_b": []}, "non-empty"),
    ({"n_boot": 10}, "n_boot must be an integer in 100..100000"),
    ({"level": 1.0}, "level must be in"),
])
def test_bootstrap_refuses_bad_input(kw, match):
    args = {"correct_a": [1, 0], "correct_b": [0, 0], **kw}
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(**args)


# -- when apply_best acts --------------------------------------------------------------------------

def interval(low, high=0.2, diff=0.1):
    return Interval(diff, low, high, 0.95, 40, 2000, 0)


def test_apply_only_when_the_interval_is_above_zero():
    act, why = apply_decision(False, interval(0.01))
    assert act and "above 0" in why and "+10.0 points" in why
    for low in (0.0, -0.05):
        act, why = apply_decision(False, interval(low))
        assert not act and "within the uncertainty" in why
    act, why = apply_decision(True, interval(0.05))
    assert not act and "is the stored decisions" in why
    assert apply_decision(False, None)[0] is False


# -- leakage: pixels ------------------------------------------------------------------------------

def test_pixel_digest_of_small_arrays():
    a = np.zeros((2, 3, 3))
    a[0, 0] = [1.0, 0.5, 0.25]
    same = a.copy() + 0.4 / 255            # rounds to the same 8-bit values
    assert pixel_digest(a) == pixel_digest(same)
    q = np.clip(np.round(a * 255), 0, 255).astype(np.uint8)
    assert pixel_digest(a) == hashlib.sha256(b"(2, 3, 3)" + q.tobytes()).hexdigest()
    b = a.copy()
    b[1, 2, 0] = 1 / 255                   # one level in one pixel
    assert pixel_digest(b) != pixel_digest(a)
    assert pixel_digest(a.reshape(3, 2, 3)) != pixel_digest(a)     # same bytes, other shape


def test_pixel_matches_by_hand():
    assert pixel_matches(["x", "y", "z", "x"], ["q", "x", "x", "z"]) == [(0, 1), (2, 3), (3, 1)]
    assert pixel_matches(["a"], []) == []


def real_photo(size=96) -> np.ndarray:
    from skimage import data
    return np.asarray(Image.fromarray(data.coffee()).resize((size + 32, size)))


def test_a_jpeg_saved_again_as_png_has_the_same_key_and_other_bytes(tmp_path):
    jpg = tmp_path / "photo.jpg"
    Image.fromarray(real_photo()).save(jpg, quality=90)
    with Image.open(jpg) as im:
        im.convert("RGB").save(tmp_path / "again.png")          # the decoded pixels, losslessly
        im.convert("RGB").save(tmp_path / "again.bmp")
        im.convert("RGB").save(tmp_path / "recompressed.jpg", quality=75)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    assert digest(jpg) != digest(tmp_path / "again.png")         # what the old byte check compared
    assert pixel_key(jpg) == pixel_key(tmp_path / "again.png") == pixel_key(tmp_path / "again.bmp")
    assert pixel_key(tmp_path / "recompressed.jpg") != pixel_key(jpg)   # other pixels: the embedding rule's case


# -- leakage: embeddings ---------------------------------------------------------------------------

TEST_X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
TRAIN_X = np.array([[1.0, 0.1], [-1.0, 0.0]])


def test_near_duplicates_by_hand():
    # raw cosines: row 0 vs train 0 = 1 / sqrt(1.01) = 0.995037; row 1: 0.1 / sqrt(1.01) = 0.0995 and 0;
    # row 2: 1.1 / (sqrt(2) sqrt(1.01)) = 0.773957 and -0.707107
    found = near_duplicates(TEST_X, TRAIN_X, 0.99, centre=False)
    assert [(i, j) for i, j, _ in found] == [(0, 0)] and found[0][2] == pytest.approx(0.995037, abs=1e-6)
    assert [(i, j) for i, j, _ in near_duplicates(TEST_X, TRAIN_X, 0.995, centre=False)] == [(0, 0)]
    assert near_duplicates(TEST_X, TRAIN_X, 0.996, centre=False) == []
    assert [(i, j) for i, j, _ in near_duplicates(TEST_X, TRAIN_X, 0.7, centre=False)] == [(0, 0), (2, 0)]


def test_centring_by_hand():
    # rows [1, 0] | [1, 0], [0, 1]: mean [2/3, 1/3]; centred [1/3, -1/3] | [1/3, -1/3], [-2/3, 2/3]
    a, b = centred([[1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]])
    s = np.sqrt(0.5)
    assert np.allclose(a, [[s, -s]]) and np.allclose(b, [[s, -s], [-s, s]])
    found = near_duplicates([[1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]], 0.99)
    assert [(i, j) for i, j, _ in found] == [(0, 0)] and found[0][2] == pytest.approx(1.0)
    # three images in a narrow cone: raw cosines 0.995 (a near-duplicate by the raw rule); centred
    # on their mean [0.99669, 0] they are [-0.00165, 0.0995], [-0.00165, -0.0995], [0.00331, 0]:
    # cosines -0.9994 and -0.0166, so none is
    x, y = [[1.0, 0.1]], [[1.0, -0.1], [1.0, 0.0]]
    assert [(i, j) for i, j, _ in near_duplicates(x, y, 0.99, centre=False)] == [(0, 1)]
    assert near_duplicates(x, y, 0.99) == []
    ca, cb = centred(x, y)
    assert float(ca[0] @ cb[0]) == pytest.approx(-0.99945, abs=1e-4) and float(ca[0] @ cb[1]) == pytest.approx(-0.0166, abs=1e-3)
    assert near_duplicates(TEST_X, np.zeros((0, 2)), 0.5) == []
    with pytest.raises(ValueError, match="2-d and training features 3-d"):
        near_duplicates(TEST_X, np.ones((1, 3)))


def test_find_leaks_reports_each_test_photo_once_pixels_first():
    names, train = ["t0", "t1", "t2"], ["f0", "f1"]
    # t0: same pixels as f1 and a near-duplicate of f0 -> pixels; t1: nothing; t2: embedding only at 0.7
    leaks = find_leaks(names, train, ["k0", "k1", "k2"], ["kx", "k0"], TEST_X, TRAIN_X, 0.7, centre=False)
    assert [(x.test, x.train, x.rule) for x in leaks] == [("t0", "f1", PIXELS), ("t2", "f0", EMBEDDING)]
    assert leaks[0].cosine == pytest.approx(-1.0) and leaks[1].cosine == pytest.approx(0.773957, abs=1e-6)
    assert find_leaks(names, train, ["k0", "k1", "k2"], ["kx", "ky"], TEST_X, TRAIN_X, 0.99,
                      centre=False)[0].rule == EMBEDDING
    msg = leak_message(leaks)
    assert msg.startswith("2 test photo(s) are also few-shot training images (by pixels 1, by embedding 1): "
                          "t0 = f1 (same decoded pixels); t2 = f0 (near-duplicate embedding, centred cosine 0.7740)")
    many = [Leak(f"t{i}", "f", PIXELS, 1.0) for i in range(7)]
    assert leak_message(many, limit=2).count(" = ") == 2 and "; ...;" in leak_message(many, limit=2)
