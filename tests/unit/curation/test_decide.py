"""Per-class decisions: history, provisional, class margin, near-duplicates, refilter."""
import numpy as np
import pytest
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.curation.decide import decide, refilter
from dtgen.nodes.scoring.errors import ClipFilterError
from dtgen.nodes.curation.thresholds import get_method


def _item(label, score, i, **kw):
    return ScoredItem(image=np.zeros((1, 1, 3), np.float32), label=label, prompt="p", index=i,
                      score=score, **kw)


def _batch(scores_by_label):
    items, i = [], 0
    for label, scores in scores_by_label.items():
        for s in scores:
            items.append(_item(label, s, i))
            i += 1
    return items


def test_threshold_per_class_and_reasons():
    cups = [0.30, 0.31, 0.29, 0.30, 0.10, 0.31, 0.30, 0.29, 0.32, 0.30]
    plates = [0.20, 0.21, 0.19, 0.20, 0.21, 0.20, 0.19, 0.22, 0.20, 0.05]
    batch = decide(_batch({"cup": cups, "plate": plates}), "mean_std")
    m = get_method("mean_std")
    assert batch.thresholds == pytest.approx({"cup": m.threshold(cups), "plate": m.threshold(plates)})
    rejected = [(it.label, it.score) for it in batch.items if not it.accepted]
    assert rejected == [("cup", 0.10), ("plate", 0.05)]
    assert {it.reason for it in batch.items if it.accepted} == {"ok"}
    assert {it.reason for it in batch.items if not it.accepted} == {"below_threshold"}
    assert all(it.method == "mean_std" and not it.provisional for it in batch.items)
    assert batch.items[0].threshold == pytest.approx(batch.thresholds["cup"])


def test_history_raises_the_bar():
    run = [0.25, 0.26, 0.24, 0.25, 0.25, 0.26, 0.24, 0.25]
    alone = decide(_batch({"cup": run}), "mean_std")
    assert all(it.accepted for it in alone.items)          # threshold 0.25 - 1.5 * 0.00707
    history = {"cup": np.full(40, 0.30) + np.linspace(-0.01, 0.01, 40)}
    with_history = decide(_batch({"cup": run}), "mean_std", history=history)
    assert with_history.thresholds["cup"] > 0.26
    assert not any(it.accepted for it in with_history.items)
    assert with_history.config["population"] == {"cup": 48}
    # history of another class does not matter
    other = decide(_batch({"cup": run}), "mean_std", history={"plate": np.full(40, 0.9)})
    assert other.thresholds == alone.thresholds


def test_provisional_below_min_count():
    items = _batch({"cup": [0.3, 0.31, 0.3, 0.1], "plate": [0.2] * 5 + [0.21] * 5})
    batch = decide(items, "mean_std", min_count=8)
    assert [it.provisional for it in batch.items if it.label == "cup"] == [True] * 4
    assert not any(it.provisional for it in batch.items if it.label == "plate")
    assert batch.config["provisional_labels"] == ["cup"]
    assert not batch.items[3].accepted                 # decided by the same rule anyway
    assert not decide(_batch({"cup": [0.3, 0.31, 0.1]}), "mean_std",
                      history={"cup": [0.3] * 5}).items[0].provisional


def _graded(label, order, class_scores, i):
    return _item(label, 0.3, i, metadata={"order": order}, extra={"class_scores": class_scores})


def test_class_margin_with_ordered_classes():
    items = [
        # neighbour grade 'mild' (order diff 1) scores higher: not a conflict
        _graded("none", 0, {"none": 0.30, "mild": 0.35, "severe": 0.20}, 0),
        # 'severe' (order diff 2) scores higher than own text: rejected
        _graded("none", 0, {"none": 0.30, "mild": 0.20, "severe": 0.31}, 1),
        _graded("severe", 2, {"none": 0.10, "mild": 0.40, "severe": 0.30}, 2),
        _graded("mild", 1, {"none": 0.50, "mild": 0.30, "severe": 0.50}, 3),
    ]
    batch = decide(items, "fixed", margin=0.0, min_count=0)
    assert [it.reason for it in batch.items] == ["ok", "class_margin", "ok", "ok"]
    # requiring a lead of 0.15: item 0 leads 'severe' by only 0.10, item 2 leads 'none' by 0.20
    strict = decide(items, "fixed", margin=0.15, min_count=0)
    assert [it.reason for it in strict.items] == ["class_margin", "class_margin", "ok", "ok"]


def test_class_margin_unordered_compares_all():
    items = [_item("cup", 0.3, 0, extra={"class_scores": {"cup": 0.30, "bowl": 0.31}}),
             _item("bowl", 0.3, 1, extra={"class_scores": {"cup": 0.20, "bowl": 0.31}})]
    assert [it.reason for it in decide(items, "fixed", margin=0.0).items] == ["class_margin", "ok"]
    items[0].extra = {}
    with pytest.raises(ClipFilterError, match=r"item 0 \(sampler index 0\): margin check needs"):
        decide(items, "fixed", margin=0.0)


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def test_near_duplicates_within_class_and_history():
    a, b = _unit([1, 0, 0]), _unit([0, 1, 0])
    a2 = _unit([1, 0.05, 0])                          # cos(a, a2) ~ 0.9988
    items = [_item("cup", 0.3, 0, embedding=a), _item("cup", 0.3, 1, embedding=a2),
             _item("cup", 0.3, 2, embedding=b), _item("bowl", 0.3, 3, embedding=a)]
    batch = decide(items, "fixed", near_dup=0.99)
    assert [it.reason for it in batch.items] == ["ok", "near_duplicate", "ok", "ok"]
    with_hist = decide(items, "fixed", near_dup=0.99, history_embeddings={"cup": np.stack([b])})
    assert [it.reason for it in with_hist.items] == ["ok", "near_duplicate", "near_duplicate", "ok"]
    assert [it.reason for it in decide(items, "fixed", near_dup=0.9999).items] == ["ok"] * 4
    with pytest.raises(ClipFilterError, match=r"item 0 \(sampler index 0\): embedding size 3 differs from earlier 4"):
        decide(items, "fixed", near_dup=0.99, history_embeddings={"cup": np.ones((2, 4))})


def test_rejected_items_do_not_count_as_originals_for_near_dup():
    a = _unit([1, 0, 0])
    items = [_item("cup", 0.1, 0, embedding=a), _item("cup", 0.3, 1, embedding=a)]
    batch = decide(items, "fixed", near_dup=0.99)
    assert [it.reason for it in batch.items] == ["below_threshold", "ok"]


def test_refilter_matches_decide():
    rng = np.random.default_rng(3)
    items = []
    for i in range(60):
        label = ["cup", "plate", "bowl"][i % 3]
        emb = _unit(rng.normal(size=8))
        cs = {k: float(rng.uniform(0.1, 0.3)) for k in ("cup", "plate", "bowl")}
        items.append(_item(label, float(rng.normal(0.3, 0.03)), i, embedding=emb,
                           extra={"class_scores": cs}))
    records = [{"label": it.label, "score": it.score, "class_scores": it.extra["class_scores"],
                "embedding": it.embedding.tolist(), "file": f"{i}.png"} for i, it in enumerate(items)]
    opts = {"method": "mean_std", "margin": -0.1, "near_dup": 0.8}
    batch = decide(items, **opts)
    result = refilter(records, **opts)
    assert [r["accepted"] for r in result.records] == [it.accepted for it in batch.items]
    assert [r["reason"] for r in result.records] == [it.reason for it in batch.items]
    assert result.thresholds == batch.thresholds
    assert result.records[5]["file"] == "5.png" and "accepted" not in records[5]
    assert {r["reason"] for r in result.records} >= {"ok", "below_threshold", "class_margin"}


@pytest.mark.parametrize("mutate,match", [
    (lambda items: setattr(items[1], "score", None), r"item 1 \(sampler index 1\): has no score"),
    (lambda items: setattr(items[2], "score", float("nan")), "item 2.*score is nan"),
    (lambda items: setattr(items[0], "label", ""), "item 0.*label is missing"),
])
def test_bad_items(mutate, match):
    items = _batch({"cup": [0.3, 0.2, 0.1]})
    mutate(items)
    with pytest.raises(ClipFilterError, match=match):
        decide(items, "mean_std")


def test_bad_options_and_records():
    items = _batch({"cup": [0.3, 0.2]})
    with pytest.raises(ClipFilterError, match="empty"):
        decide([], "mean_std")
    with pytest.raises(ClipFilterError, match="near_dup=1.5"):
        decide(items, "mean_std", near_dup=1.5)
    with pytest.raises(ClipFilterError, match="unknown threshold method"):
        decide(items, "bogus")
    with pytest.raises(ClipFilterError, match=r"history\['cup'\]"):
        decide(items, "mean_std", history={"cup": [np.inf]})
    with pytest.raises(ClipFilterError, match="record 1: score 'x' is not a number"):
        refilter([{"label": "a", "score": 0.1}, {"label": "a", "score": "x"}], "mean_std")
    with pytest.raises(ClipFilterError, match="near-duplicate check needs an image embedding"):
        refilter([{"label": "a", "score": 0.3}], "fixed", near_dup=0.9)
