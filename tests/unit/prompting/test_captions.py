"""Captions for real images without a ``.txt`` (nodes/prompting/captions.py): ``training_caption``
gives ``"<trigger>, <clip_text>"`` of a pack class (the shipped tableware pack, and inline packs
with and without a trigger), an unknown label is refused naming the label, the pack and its
classes, and ``caption_function`` maps labels through a pack or, without one, to the plain
``a photo of <label>``."""
from __future__ import annotations

import pytest

from dtgen.nodes.common.labels import default_class_text
from dtgen.nodes.prompting.captions import caption_function, training_caption
from dtgen.nodes.prompting.pack import PromptPackError, load_pack, parse_pack
from support.pkg import ROOT

TABLEWARE = ROOT / "prompts" / "tableware.yaml"

INLINE = """\
version: 1
name: {name}
{trigger_line}
classes:
  - label: mug_clean
    templates: ["a clean mug"]
    clip_text: "  a photo of a clean mug  "
  - label: mug_dirty
    templates: ["a dirty mug"]
"""


def inline_pack(trigger_line: str = "", name: str = "mugs"):
    return parse_pack(INLINE.format(name=name, trigger_line=trigger_line), source="mugs.yaml")


@pytest.fixture(scope="module")
def tableware():
    return load_pack(str(TABLEWARE))


def test_tableware_caption_is_trigger_then_clip_text(tableware):
    assert tableware.trigger == "dtgtableware"
    assert training_caption(tableware, "plate_clean") == "dtgtableware, a photo of a clean plate"
    assert training_caption(tableware, "bowl_heavily_dirty") == "dtgtableware, a photo of a heavily dirty bowl"


def test_every_tableware_class_gets_its_own_clip_text(tableware):
    captions = {label: training_caption(tableware, label) for label in tableware.labels}
    assert len(captions) == 8 and len(set(captions.values())) == 8        # no two classes share a caption
    for cls in tableware.classes:
        assert captions[cls.label] == f"dtgtableware, {cls.clip_text}"


def test_unknown_label_names_the_label_the_pack_and_its_classes(tableware):
    with pytest.raises(PromptPackError) as info:
        training_caption(tableware, "cup_clean")
    message = str(info.value)
    assert "'cup_clean'" in message
    assert "'tableware'" in message
    assert "classes: " + ", ".join(tableware.labels) in message
    assert "plate_clean" in message and "bowl_heavily_dirty" in message
    assert isinstance(info.value, ValueError)


def test_label_match_is_exact_not_case_folded_or_prefix(tableware):
    for near in ("Plate_clean", "plate", "plate_clean ", "plate_cleaner"):
        with pytest.raises(PromptPackError, match="is not a class of prompt pack"):
            training_caption(tableware, near)


def test_pack_without_trigger_gives_only_the_clip_text():
    pack = inline_pack()                                  # no trigger key at all
    assert pack.trigger == ""
    assert training_caption(pack, "mug_clean") == "a photo of a clean mug"      # stripped, no leading ", "
    assert training_caption(pack, "mug_dirty") == "a photo of mug dirty"        # the default clip_text
    blank = inline_pack('trigger: "   "')                 # a blank trigger counts as none
    assert training_caption(blank, "mug_clean") == "a photo of a clean mug"


def test_inline_pack_with_trigger_and_its_error_names_that_pack():
    pack = inline_pack("trigger: sksmug", name="my_mugs")
    assert training_caption(pack, "mug_dirty") == "sksmug, a photo of mug dirty"
    with pytest.raises(PromptPackError) as info:
        training_caption(pack, "plate_clean")
    assert "'plate_clean'" in str(info.value) and "'my_mugs'" in str(info.value)
    assert "(classes: mug_clean, mug_dirty)" in str(info.value)


def test_caption_function_with_a_pack_uses_training_caption(tableware):
    caption = caption_function(tableware)
    assert caption("plate_clean") == "dtgtableware, a photo of a clean plate"
    assert caption("bowl_slightly_dirty") == training_caption(tableware, "bowl_slightly_dirty")
    with pytest.raises(PromptPackError, match="'unknown'"):
        caption("unknown")                                # raised when called, naming the label


def test_caption_function_without_a_pack_is_a_photo_of_the_label():
    caption = caption_function(None)
    assert caption is default_class_text
    assert caption("plate_clean") == "a photo of plate clean"
    assert caption("any-label.v2") == "a photo of any label v2"
    assert "dtgtableware" not in caption("plate_clean")
