"""The CLIP filter rejecting images *because they do not match their class*.

A small CLIP trained at fixture time on real labelled textile images (tests/support/tiny_clip.py)
is loaded through ``load_clip`` (a custom architecture from its config JSON) and scores held-out
images through the real filter path (``filtering.filter_run``, class-text side, one run holding
all three classes). Into each class we plant images that do not belong there: held-out images of
another class, real photos the model never saw, a constant frame and a noise frame. Every
threshold method must reject the planted images at the precision and recall measured for this
model (floors below, with margin); the class-margin check must catch images nearer another
class's text. Figures are computed here and shown in the assertion messages.

Needs ``conformal-clip-data`` (tests/requirements.txt); the first run trains the model (a few
minutes on 2 cores), later runs load it from the fixture cache.
"""
from __future__ import annotations

import numpy as np
import pytest
from support.tiny_clip import (
    PHOTOS,
    TEXTILE,
    data_missing,
    held_out,
    load_image,
    photo,
    summary,
    tiny_clip,
)

if data_missing():
    pytest.skip(f"needs {data_missing()} (tests/requirements.txt)", allow_module_level=True)

from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.curation.filtering import filter_run
from dtgen.nodes.curation.thresholds import get_method
from dtgen.nodes.scoring.clip_model import load_clip

pytestmark = pytest.mark.slow   # the first run trains the fixture model

INLIERS = 60                    # held-out images per class scored as that class
PLANTED_TEXTILE = 6             # held-out images of another class planted into each class
# Another class's images planted into each class. "local" (one mark of about 13 x 21 px) is not
# separable from "nominal" at the model's 96 px input (measured: zero-shot ~50 % between the two,
# their texts at cosine 0.97), so those two are not planted into each other.
WRONG = {"nominal": ("global",), "local": ("global",), "global": ("nominal", "local")}
# Real photos the model never saw (scikit-image bundles them; none of them is in PHOTOS).
UNSEEN = {"nominal": ("retina", "hubble_deep_field"), "local": ("immunohistochemistry", "clock"),
          "global": ("text", "page")}
FIXED = 0.5                     # between this model's own-text (p5 ~0.8) and other-text (~0.2) scores
# (method, params) -> (precision floor, recall floor) of rejecting the 30 planted images among the
# 210. Measured on models trained with seeds 0 / 1 / 2 (DTGEN_TINY_CLIP_SEED), precision; recall:
#   mean_std(k=1.5)   1.00 1.00 1.00; 0.73 0.73 0.60  (the planted scores widen the std: masking)
#   median_mad(k=2.5) 0.79 0.81 0.81; 1.00 1.00 1.00  (own-text scores have a long lower tail)
#   percentile(p=90)  1.00 1.00 1.00; 0.70 0.70 0.70  (rejects 10 % of each class: at most 0.70)
#   fixed(0.5)        1.00 1.00 0.96; 0.97 0.93 0.90
#   gmm               0.94 0.79 0.91; 1.00 1.00 0.70  (seed 2: two classes fell back to mean_std)
# The floors leave at least 0.1 below the lowest of the three.
FLOORS = {
    ("mean_std", ()): (0.9, 0.45),
    ("median_mad", ()): (0.65, 0.9),
    ("percentile", ()): (0.85, 0.6),
    ("fixed", (("value", FIXED),)): (0.85, 0.75),
    ("gmm", ()): (0.65, 0.55),
}
MARGIN_FLOORS = (0.75, 0.9)     # mislabelled caught, correctly labelled kept: measured 1.0 / 1.0 / 0.9; 1.0


def _item(image, label: str, index: int) -> ScoredItem:
    return ScoredItem(image=image, label=label, prompt=TEXTILE[label], index=index, seed=index,
                      metadata={"pack": "textile", "clip_text": TEXTILE[label]})


def _show(config, text: str) -> None:
    """Print past pytest's output capture (the fixture build's figures belong in the CI log)."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        print(text)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(text)


@pytest.fixture(scope="module")
def trained(request):
    import torch
    from dtgen.nodes.scoring import clip_model

    torch.set_num_threads(2)
    folder, arch, weights, info = tiny_clip(quiet=True)
    if info["built_now"]:
        _show(request.config, summary(info))
    saved = clip_model._CACHE.copy()
    yield load_clip(arch, str(folder / weights)), info
    with clip_model._CACHE_LOCK:   # leave load_clip's LRU cache to the other modules' models
        clip_model._CACHE.clear()
        clip_model._CACHE.update(saved)


@pytest.fixture(scope="module")
def population():
    """(images, labels, kinds): per class INLIERS held-out images of it ("ok") plus planted ones
    ("wrong_class", "photo", "constant", "noise"); planted textile images come from the end of
    the held-out lists, never used as inliers."""
    rng = np.random.default_rng(7)
    images, labels, kinds = [], [], []
    spare = {label: held_out(label)[INLIERS:] for label in TEXTILE}
    for c, label in enumerate(TEXTILE):
        for path in held_out(label, INLIERS):
            images.append(load_image(path)), labels.append(label), kinds.append("ok")
        sources = WRONG[label]
        for i in range(PLANTED_TEXTILE):
            other = sources[i % len(sources)]
            images.append(load_image(spare[other].pop(0))), labels.append(label), kinds.append("wrong_class")
        for name in UNSEEN[label]:
            full = photo(name)
            side = min(full.shape[:2])
            images.append(full[:side, :side]), labels.append(label), kinds.append("photo")
        images.append(np.full((250, 250, 3), (0.3, 0.5, 0.7)[c], np.float32))
        labels.append(label), kinds.append("constant")
        images.append(rng.random((250, 250, 3), dtype=np.float32)), labels.append(label), kinds.append("noise")
    assert not {name for names in UNSEEN.values() for name in names} & set(PHOTOS)
    return images, labels, kinds


def _run(bundle, population, method, margin=None):
    images, labels, _ = population
    items = [_item(img, label, i) for i, (img, label) in enumerate(zip(images, labels))]
    batch, _ = filter_run(bundle, items, method, text_side="class_text", min_count=8, margin=margin)
    return batch


def _rates(batch, kinds) -> tuple[float, float, str]:
    rejected = np.array([not it.accepted for it in batch.items])
    bad = np.array([k != "ok" for k in kinds])
    tp = int((rejected & bad).sum())
    precision = tp / rejected.sum() if rejected.sum() else 1.0
    recall = tp / bad.sum()
    parts = []
    for kind in ("wrong_class", "photo", "constant", "noise"):
        mine = np.array([k == kind for k in kinds])
        parts.append(f"{kind} {int((rejected & mine).sum())}/{int(mine.sum())}")
    ok = ~bad
    parts.append(f"inliers rejected {int((rejected & ok).sum())}/{int(ok.sum())}")
    thresholds = ", ".join(f"{k} {v:.3f}" for k, v in batch.thresholds.items())
    return precision, recall, f"{'; '.join(parts)}; thresholds {thresholds}"


@pytest.mark.parametrize("name,params", list(FLOORS))
def test_each_method_rejects_images_that_do_not_match_their_class(trained, population, name, params):
    bundle, _ = trained
    method = get_method(name, **dict(params))
    batch = _run(bundle, population, method)
    precision, recall, detail = _rates(batch, population[2])
    p_floor, r_floor = FLOORS[(name, params)]
    text = f"{method!r}: precision {precision:.3f} (floor {p_floor}), recall {recall:.3f} (floor {r_floor}); {detail}"
    print(text)
    assert precision >= p_floor and recall >= r_floor, text


def test_planted_images_score_below_the_class_images(trained, population):
    """The meaning behind the thresholds: per class, the planted images' mean score on the class
    text lies well below the class's own images' (measured gaps 0.65-1.0 over three seeds)."""
    bundle, _ = trained
    batch = _run(bundle, population, get_method("fixed", value=-1.0))
    kinds = population[2]
    gaps = {}
    for label in TEXTILE:
        own = [it.score for it, k in zip(batch.items, kinds) if it.label == label and k == "ok"]
        bad = [it.score for it, k in zip(batch.items, kinds) if it.label == label and k != "ok"]
        gaps[label] = (float(np.mean(own)), float(np.mean(bad)))
    text = ", ".join(f"{k}: own {a:.3f} vs planted {b:.3f}" for k, (a, b) in gaps.items())
    print(text)
    assert all(a - b >= 0.3 for a, b in gaps.values()), text


def test_class_margin_catches_images_nearer_another_class_text(trained):
    """Global-defect images labelled "nominal" pass a permissive threshold but lie nearer the
    global text: the margin check rejects them (reason class_margin); nominal images stay.
    "local" is left out of this run: its text sits at cosine 0.97 to nominal's, so margin 0 would
    reject about half of the nominal images too (neighbouring classes are what ``order`` is for)."""
    bundle, _ = trained
    nominal = [load_image(p) for p in held_out("nominal", 40)]
    global_ = [load_image(p) for p in held_out("global", 40)]
    images = nominal + global_[:20] + global_[20:]
    labels = ["nominal"] * 40 + ["nominal"] * 20 + ["global"] * 20
    mislabelled = np.r_[np.zeros(40, bool), np.ones(20, bool), np.zeros(20, bool)]
    items = [_item(img, label, i) for i, (img, label) in enumerate(zip(images, labels))]
    batch, _ = filter_run(bundle, items, get_method("fixed", value=-1.0), text_side="class_text",
                          min_count=8, margin=0.0)
    reasons = np.array([it.reason for it in batch.items])
    for it in batch.items:   # every class_margin rejection: another class text scored at least as high
        if it.reason == "class_margin":
            own = it.extra["class_scores"][it.label]
            assert max(v for k, v in it.extra["class_scores"].items() if k != it.label) >= own
    caught = float((reasons[mislabelled] == "class_margin").mean())
    kept = float((reasons[~mislabelled] == "ok").mean())
    text = (f"mislabelled caught {caught:.2f} (floor {MARGIN_FLOORS[0]}), correctly labelled kept "
            f"{kept:.2f} (floor {MARGIN_FLOORS[1]})")
    print(text)
    assert caught >= MARGIN_FLOORS[0] and kept >= MARGIN_FLOORS[1], text
