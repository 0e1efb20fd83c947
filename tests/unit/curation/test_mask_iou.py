"""Mask IoU filter (nodes/curation/mask_iou, change_detect): IoU against closed forms, the change detector on
synthetic before/after pairs (a real photo, a pasted soft-edged blob of another texture and colour,
noise and JPEG) against the pasted mask, its numpy building blocks against skimage, and the
decision: reasons, per-class thresholds, provisional classes, ScoredItems, every refusal."""
from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from skimage import data
from skimage.filters import gaussian as sk_gaussian
from skimage.filters import threshold_otsu
from skimage.measure import label as sk_label

from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.curation.change_detect import components, gaussian, otsu
from dtgen.nodes.curation.mask_iou import MaskIoUError, decide_iou, iou, predicted_from_change
from dtgen.nodes.scoring.errors import ClipFilterError
from dtgen.nodes.synthesis.defect_masks import DefectMaskSampler


def square(size, x, y, side, h=None):
    m = np.zeros((h or size, size), bool)
    m[y:y + side, x:x + side] = True
    return m


# ---- IoU -------------------------------------------------------------------------------------

def test_iou_closed_forms():
    a = square(100, 10, 10, 20)
    assert iou(a, a) == 1.0
    assert iou(a, square(100, 50, 50, 20)) == 0.0
    inner, outer = square(100, 20, 20, 10), square(100, 10, 10, 40)
    assert iou(inner, outer) == pytest.approx(100 / 1600, abs=0)            # nested: |A| / |B|
    s = 40
    for dx in (1, 13, 20, 39):                                           # shifted squares: closed form
        inter = (s - dx) * s
        assert iou(square(128, 10, 10, s), square(128, 10 + dx, 10, s)) == inter / (2 * s * s - inter)
    assert iou(square(128, 0, 0, s), square(128, s // 2, 0, s)) == pytest.approx(1 / 3)   # half overlap
    assert iou(np.zeros((5, 5), bool), np.zeros((5, 5))) == 1.0          # both empty: defined as 1
    assert iou(a.astype(np.float32), a[None].astype(np.uint8)) == 1.0    # 0/1 numbers, a 1 x H x W mask


def test_iou_refuses_other_sizes_and_non_binary_masks():
    with pytest.raises(MaskIoUError, match=re.escape("masks are 100 x 100 and 100 x 90; they are not resized")):
        iou(square(100, 0, 0, 5), square(100, 0, 0, 5, h=90))
    soft = square(50, 5, 5, 10) * 0.7
    with pytest.raises(MaskIoUError, match=r"masks \(second\): mask is not binary \(a value 0.7"):
        iou(square(50, 5, 5, 10), soft)
    assert iou(square(50, 5, 5, 10), soft, binarize=True) == 1.0
    assert iou(square(50, 5, 5, 10), soft * (1 + 5e-4) / 0.7) == 1.0     # within the tolerance
    assert isinstance(MaskIoUError("x"), ClipFilterError)


# ---- building blocks against skimage ---------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_components_match_skimage(seed):
    rng = np.random.default_rng(seed)
    m = sk_gaussian(rng.random((90, 130)), 1.0) > 0.5 if seed % 2 else rng.random((90, 130)) > 0.55
    for conn, sk_conn in ((8, 2), (4, 1)):
        labels, sizes = components(m, connectivity=conn)
        ref = sk_label(m, connectivity=sk_conn)
        assert labels.max() == ref.max() and sizes[0] == (~m).sum() and sizes.sum() == m.size
        pairs = set(zip(labels[m].tolist(), ref[m].tolist()))
        assert len(pairs) == ref.max()                              # the same partition, other numbers
        assert sorted(sizes[1:].tolist()) == sorted(np.bincount(ref[m])[1:].tolist())
    labels, sizes = components(np.zeros((4, 6), bool))
    assert labels.max() == 0 and sizes.tolist() == [24]


def test_gaussian_and_otsu_match_skimage():
    a = np.random.default_rng(0).random((40, 60))
    for sigma in (0.8, 1.5, 3.0):
        assert np.allclose(gaussian(a, sigma), sk_gaussian(a, sigma, mode="reflect", truncate=3.0), atol=2e-3)
    assert gaussian(a, 0) is a
    rng = np.random.default_rng(1)
    v = np.clip(np.concatenate([rng.normal(0.2, 0.05, 5000), rng.normal(0.7, 0.08, 3000)]), 0, 1)
    assert abs(otsu(v) - threshold_otsu(v)) < 2 / 256


# ---- the change detector ---------------------------------------------------------------------

def _blob(rng, h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(60, h - 60), rng.uniform(60, w - 60)
    theta, r = np.arctan2(yy - cy, xx - cx), np.hypot(yy - cy, xx - cx)
    radius = rng.uniform(20, 45) * (1 + sum(rng.uniform(-0.15, 0.15) * np.cos(k * theta + rng.uniform(0, 6.3))
                                            for k in range(2, 5)))
    return r <= radius


def _jpeg(image, quality=90):
    buf = io.BytesIO()
    Image.fromarray((image * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf)).astype(np.float64) / 255


def before_after(photo, seed):
    """(source, generated, pasted mask): a soft-edged blob of bluish grass texture pasted on a real
    photo, then mild noise and JPEG on the whole generated image."""
    rng = np.random.default_rng(seed)
    src = photo[:256, :256].astype(np.float64) / 255
    mask = _blob(rng, 256, 256)
    alpha = gaussian(mask.astype(np.float64), 1.5)[..., None]
    grass = data.grass().astype(np.float64) / 255
    y0, x0 = rng.integers(0, grass.shape[0] - 256), rng.integers(0, grass.shape[1] - 256)
    texture = 0.15 + grass[y0:y0 + 256, x0:x0 + 256, None] * np.array([0.1, 0.3, 0.9]) * rng.uniform(0.5, 0.8)
    gen = np.clip(src * (1 - alpha) + texture * alpha + rng.normal(0, 0.01, src.shape), 0, 1)
    return src, _jpeg(gen), mask


@pytest.mark.parametrize("photo", ["chelsea", "coffee"])
def test_change_detector_recovers_the_pasted_blob(photo):
    for seed in range(6):
        src, gen, mask = before_after(getattr(data, photo)(), seed)
        change = predicted_from_change(src, gen)
        value = iou(change.mask, mask)
        assert value >= 0.9, (photo, seed, value, change.params)
        assert change.params["components"] == 1 and change.params["threshold_used"] == 0.1
        json.dumps(change.params)
        assert decide_iou([{"label": "patches", "condition": mask, "predicted": change.mask}])[0].reason == "ok"


def _pasted_ious(min_width: int) -> dict:
    """{label: IoUs} of sampler masks pasted (soft edge, noise, JPEG) and found by the detector."""
    src = data.chelsea()[:256, :256].astype(np.float64) / 255
    grass = data.grass()[:256, :256, None].astype(np.float64) / 255
    texture = 0.15 + grass * np.array([0.1, 0.3, 0.9]) * 0.7
    sampler = DefectMaskSampler(256, seed=1, min_width=min_width, line_width=(min_width, 2 * min_width))
    out: dict = {}
    for label in ("crazing", "scratches", "inclusion", "patches", "pitted_surface"):
        for i in range(4):
            mask = sampler.mask(i, label)[0]
            alpha = gaussian(mask.astype(np.float64), 1.0)[..., None]
            noise = np.random.default_rng(i).normal(0, 0.01, src.shape)
            gen = _jpeg(np.clip(src * (1 - alpha) + texture * alpha + noise, 0, 1))
            out.setdefault(label, []).append(iou(predicted_from_change(src, gen).mask, mask))
    return out


def test_sampler_masks_pass_the_filter_unless_thin():
    """DefFiller's < 10 px guideline in numbers: the same paste, found the same way, loses IoU on
    thin lines (one boundary pixel is a larger share of a thin mask)."""
    wide, thin = _pasted_ious(10), _pasted_ious(3)
    assert min(v for values in wide.values() for v in values) >= 0.8, wide
    lines = {w: float(np.median(r["crazing"] + r["scratches"])) for w, r in ((10, wide), (3, thin))}
    assert lines[3] < 0.85 < lines[10], lines


def test_change_detector_otsu_and_threshold_edges():
    src, gen, mask = before_after(data.chelsea(), 3)
    auto = predicted_from_change(src, gen, threshold="otsu")
    assert auto.params["threshold"] == "otsu" and 0.03 <= auto.params["threshold_used"] < 0.5
    assert iou(auto.mask, mask) >= 0.9
    plain = predicted_from_change(src, gen, edge="threshold")
    # a fixed threshold below half the contrast grows the mask by the soft edge
    assert plain.mask.sum() > mask.sum() and iou(plain.mask, mask) < iou(predicted_from_change(src, gen).mask, mask)


def test_change_detector_drops_specks_and_sees_no_change_as_empty():
    src = data.coffee()[:128, :128].astype(np.float64) / 255
    gen = _jpeg(np.clip(src + np.random.default_rng(0).normal(0, 0.01, src.shape), 0, 1))
    assert not predicted_from_change(src, gen).mask.any()
    speck = gen.copy()
    speck[40:44, 40:44] = [0.0, 0.0, 1.0]                     # 16 px, blurred to a few dozen
    kept = predicted_from_change(src, speck)
    assert kept.params["components"] == 1 and 16 <= kept.mask.sum() < 120 and kept.mask[40:44, 40:44].all()
    change = predicted_from_change(src, speck, min_area=120)
    assert not change.mask.any() and change.params["components_removed"] == 1 and change.params["min_area"] == 120
    item = decide_iou([{"label": "pits", "condition": square(128, 38, 38, 8), "predicted": change.mask}])[0]
    assert item == (False, 0.0, 0.6, "empty_prediction", True)


def test_change_detector_fills_small_holes_only():
    src = np.zeros((64, 96, 3))
    gen = src.copy()
    gen[10:30, 10:30] = 0.5
    gen[18:21, 18:21] = 0.0                                   # a 9 px hole: filled
    gen[10:50, 40:80] = 0.5
    gen[24:36, 54:66] = 0.0                                   # a 144 px hole: kept
    change = predicted_from_change(src, gen, sigma=0, opening=0, edge="threshold")
    expected = np.zeros((64, 96), bool)
    expected[10:30, 10:30] = expected[10:50, 40:80] = True
    expected[24:36, 54:66] = False
    assert (change.mask == expected).all() and change.params["holes_filled"] == 1
    assert change.params["components"] == 2


def test_change_detector_refusals():
    a = np.zeros((20, 30, 3))
    with pytest.raises(MaskIoUError, match=re.escape("item 4: source is 30 x 20 but generated is 30 x 21")):
        predicted_from_change(a, np.zeros((21, 30, 3)), where="item 4")
    with pytest.raises(MaskIoUError, match=r"item generated: image values must be finite and in \[0, 1\]"):
        predicted_from_change(a, a + 255)
    for kw, name in (({"threshold": 0}, "threshold"), ({"threshold": "auto"}, "threshold"),
                     ({"sigma": -1}, "sigma"), ({"min_area": 2.5}, "min_area"), ({"edge": "x"}, "edge")):
        with pytest.raises(MaskIoUError, match=f"^{name}: "):
            predicted_from_change(a, a, **kw)


# ---- the decision ----------------------------------------------------------------------------

def test_decisions_and_reasons():
    cond = square(64, 10, 10, 20)
    entries = [
        {"label": "scratches", "condition": cond, "predicted": cond},                       # 1.0
        {"label": "scratches", "condition": cond, "predicted": square(64, 10, 18, 20)},    # 240/560
        {"label": "scratches", "condition": cond, "predicted": np.zeros((64, 64))},
        {"label": "patches", "iou": 0.6},                                                   # boundary: >=
        {"label": "patches", "iou": 0.59},
        0.7,
    ]
    out = decide_iou(entries, min_count=3)
    assert [d.reason for d in out] == ["ok", "mask_iou_below", "empty_prediction", "ok", "mask_iou_below", "ok"]
    assert [d.accepted for d in out] == [True, False, False, True, False, True]
    assert out[1].iou == pytest.approx(240 / 560) and out[2].iou == 0.0
    assert [d.provisional for d in out] == [False, False, False, True, True, True]     # 3, 2, 1 per class
    assert all(d.threshold == 0.6 for d in out)
    per = decide_iou(entries, per_class={"scratches": 0.45, "patches": 0.65}, history={"patches": [0.9] * 10})
    assert [d.reason for d in per[:5]] == ["ok", "mask_iou_below", "empty_prediction", "mask_iou_below",
                                           "mask_iou_below"]
    assert [d.threshold for d in per] == [0.45, 0.45, 0.45, 0.65, 0.65, 0.6]
    assert [d.provisional for d in per] == [True, True, True, False, False, True]


def test_size_mismatch_is_refused_or_rejected():
    cond = square(64, 10, 10, 20)
    small = np.zeros((56, 64), bool)
    with pytest.raises(MaskIoUError, match=re.escape("entry 1 (label 'x'): the conditioning mask is 64 x 64 but "
                                                     "the predicted mask is 64 x 56; masks are refused, not resized")):
        decide_iou([0.9, {"label": "x", "condition": cond, "predicted": small}])
    out = decide_iou([{"label": "x", "condition": cond, "predicted": small}], size_mismatch="reject")
    assert out[0] == (False, None, 0.6, "size_mismatch", True)
    item = ScoredItem(image=np.zeros((60, 64, 3), np.float32), label="x", prompt="p", index=7)
    with pytest.raises(MaskIoUError, match=re.escape("entry 0 (sampler index 7) (label 'x'): the conditioning mask "
                                                     "is 64 x 64 but the image is 64 x 60")):
        decide_iou([{"item": item, "condition": cond, "predicted": cond}])


@pytest.mark.parametrize("entry,message", [
    ({"label": "a", "condition": square(32, 0, 0, 4), "predicted": square(32, 0, 0, 4) * 0.5},
     "entry 0 (label 'a') predicted mask: mask is not binary"),
    ({"label": "a", "condition": np.zeros((32, 32)), "predicted": square(32, 0, 0, 4)},
     "entry 0 (label 'a'): the conditioning mask is empty"),
    ({"label": "a", "condition": np.ones((32, 32)), "predicted": square(32, 0, 0, 4)},
     "entry 0 (label 'a'): the conditioning mask covers the whole image"),
    ({"label": "a", "condition": square(32, 0, 0, 4)}, "entry 0 (label 'a'): needs 'iou', or both"),
    ({"label": "a", "iou": 1.5}, "entry 0 (label 'a') iou: must be a number in [0, 1], got 1.5"),
    ("0.7", "entry 0: is a str; expected an IoU or a dict"),
])
def test_bad_entries_are_refused_naming_the_entry(entry, message):
    with pytest.raises(MaskIoUError, match="^" + re.escape(message)):
        decide_iou([entry])


def test_binarize_keeps_soft_masks():
    cond = square(32, 4, 4, 10).astype(np.float32) * 0.9
    assert decide_iou([{"label": "a", "condition": cond, "predicted": cond}], binarize=True)[0].iou == 1.0


def test_bad_options_are_refused():
    for kw, name in (({"threshold": 1.2}, "threshold"), ({"per_class": {"a": -0.1}}, "per_class['a']"),
                     ({"min_count": -1}, "min_count"), ({"size_mismatch": "resize"}, "size_mismatch")):
        with pytest.raises(MaskIoUError, match="^" + re.escape(name)):
            decide_iou([0.5], **kw)
    with pytest.raises(MaskIoUError, match="nothing to decide"):
        decide_iou([])
    assert [d.reason for d in decide_iou(np.array([0.7, 0.2], np.float32))] == ["ok", "mask_iou_below"]
    assert decide_iou([{"label": "a", "iou": np.float32(0.65)}])[0].accepted


def test_scored_items_get_the_decision_in_place():
    cond = square(64, 10, 10, 20)
    imap = cond.astype(np.uint16)

    def make(reason="unfiltered", accepted=True, method=None):
        return ScoredItem(image=np.zeros((64, 64, 3), np.float32), label="crazing", prompt="p", reason=reason,
                          accepted=accepted, method=method, score=0.3 if method else None,
                          threshold=0.25 if method else None, instance_map=imap)

    fresh, clip_ok, clip_rejected, miss = make(), make("ok", method="mean_std"), \
        make("below_threshold", False, "mean_std"), make()
    out = decide_iou([{"item": fresh, "predicted": cond}, {"item": clip_ok, "predicted": cond},
                      {"item": clip_rejected, "predicted": cond}, {"item": miss, "predicted": square(64, 40, 40, 10)}])
    assert [d.reason for d in out] == ["ok", "ok", "ok", "mask_iou_below"]
    assert (fresh.accepted, fresh.reason, fresh.method, fresh.threshold) == (True, "ok", "mask_iou", 0.6)
    assert (clip_ok.reason, clip_ok.method, clip_ok.threshold, clip_ok.score) == ("ok", "mean_std", 0.25, 0.3)
    assert (clip_rejected.accepted, clip_rejected.reason) == (False, "below_threshold")   # the first failure
    assert (miss.accepted, miss.reason, miss.provisional) == (False, "mask_iou_below", True)
    assert miss.extra["mask_iou"] == {"method": "mask_iou", "iou": 0.0, "threshold": 0.6, "reason": "mask_iou_below",
                                      "accepted": False, "provisional": True}
    json.dumps(miss.extra)


def test_per_class_lines_are_parsed_once_and_bad_ones_named():
    from dtgen.nodes.curation.mask_iou import MAX_PER_CLASS_CHARS, parse_per_class

    assert parse_per_class("scratches: 0.45\n\n  patches :0.65 \n") == {"scratches": 0.45, "patches": 0.65}
    assert parse_per_class("") == {} and parse_per_class(None) == {}
    for text, said in (("scratches 0.4", "per_class line 1 ('scratches 0.4'): expected 'label: threshold'"),
                       ("a: 0.5\nb: high", "per_class line 2 ('b: high'): threshold 'high' is not a number"),
                       ("a: 1.5", "per_class line 1 ('a: 1.5'): must be a number in [0, 1], got 1.5"),
                       ("a: 0.5\na: 0.6", "per_class line 2 ('a: 0.6'): label 'a' is given twice"),
                       (": 0.5", "per_class line 1 (': 0.5'): expected 'label: threshold'"),
                       ("../x: 0.5", "per_class line 1 ('../x: 0.5'): label '../x' contains '/'"),
                       ("a: nan", "must be a number in [0, 1], got nan"),
                       ("a: 0.5\n" * (MAX_PER_CLASS_CHARS // 7 + 1), f"per_class: is {7 * (MAX_PER_CLASS_CHARS // 7 + 1)} characters long")):
        with pytest.raises(MaskIoUError) as err:
            parse_per_class(text)
        assert said in str(err.value), (text[:40], str(err.value))
