"""Per-item lists of a queue run -> ScoredItems (what the filter and the writer receive)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dtgen.nodes.common.items import ItemListError, items_from_lists
from dtgen.nodes.common.lists import as_list, first


def img(h=8, w=8, batch=None):
    shape = (h, w, 3) if batch is None else (batch, h, w, 3)
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def meta(i, label):
    return json.dumps({"index": i, "pack_hash": "ab", "label": label, "clip_text": f"a photo of {label}"})


def test_lists_align_per_item():
    items = items_from_lists([img(), img()], ["p0", "p1"], ["a", "b"], [meta(0, "a"), meta(1, "b")],
                             ["n"], [11, 12])
    assert [(it.label, it.prompt, it.negative, it.seed, it.index) for it in items] == [
        ("a", "p0", "n", 11, 0), ("b", "p1", "n", 12, 1)]
    assert items[1].metadata["clip_text"] == "a photo of b"


def test_a_batch_image_repeats_its_item_with_distinct_ids():
    items = items_from_lists([img(batch=3)], ["p"], ["a"], [meta(5, "a")])
    assert len(items) == 3 and {it.label for it in items} == {"a"}
    assert len({it.metadata["item_id"] for it in items}) == 3
    assert [it.extra["batch_index"] for it in items] == [0, 1, 2]


@pytest.mark.parametrize("kwargs, field", [
    (dict(images=[], positive=["p"], label=["a"]), "images"),
    (dict(images=[img(), img()], positive=["p"] * 3, label=["a", "b"]), "positive"),
    (dict(images=[img()], positive=["p"], label=[""]), "label"),
    (dict(images=[img()], positive=["p"], label=["a"], metadata=["{not json"]), "metadata"),
    (dict(images=[img()], positive=["p"], label=["a"], metadata=["[1, 2]"]), "metadata"),
])
def test_bad_lists_name_the_input(kwargs, field):
    with pytest.raises(ItemListError) as err:
        items_from_lists(**kwargs)
    assert err.value.field == field and str(err.value).startswith(field)


def test_widget_values_of_input_list_nodes():
    assert first([3, 4]) == 3 and first(5) == 5 and first([], "d") == "d" and first(None, 1) == 1
    assert as_list(None) == [] and as_list("x") == ["x"] and as_list((1, 2)) == [1, 2]


def test_batch_frames_of_another_sampler_stream_are_other_items():
    """Frames of index 5 under a new seed (another stream) must not collide with the old frames."""
    def streamed(stream):
        return json.dumps(dict(json.loads(meta(5, "a")), stream=stream))

    old = items_from_lists([img(batch=2)], ["p"], ["a"], [streamed("s1")])
    new = items_from_lists([img(batch=2)], ["p"], ["a"], [streamed("s2")])
    ids_old = {it.metadata["item_id"] for it in old}
    ids_new = {it.metadata["item_id"] for it in new}
    assert len(ids_old) == len(ids_new) == 2 and not ids_old & ids_new
