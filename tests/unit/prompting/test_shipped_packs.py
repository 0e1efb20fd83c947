"""The packs shipped in prompts/ load and carry the vocabularies the docs promise."""
import pytest

from dtgen.nodes.common.labels import label_problem
from dtgen.nodes.prompting.catalog import pack_files
from dtgen.nodes.prompting.pack import load_pack
from dtgen.nodes.prompting.sampler import MODES, Sampler
from support.pkg import ROOT

PROMPTS = ROOT / "prompts"
LEVELS = {"clean": 0.0, "slightly_dirty": 0.25, "moderately_dirty": 0.6, "heavily_dirty": 1.0}


def distinct_texts(entries):
    return {e.text.strip().lower() for e in entries}


def test_shipped_packs_are_found_and_load():
    found = pack_files()
    assert set(found) == {"tableware", "fruits", "steel_defects"}
    for name, path in found.items():
        assert path == str(PROMPTS / f"{name}.yaml")
        pack = load_pack(path)
        assert pack.name == name
        assert all(label_problem(label) is None for label in pack.labels)
        for mode in MODES:
            item = Sampler(pack, mode, 0).item(0)
            assert item.positive and "{" not in item.positive and item.negative


def test_tableware_classes_levels_and_vocabularies():
    pack = load_pack(pack_files()["tableware"])
    assert pack.trigger == "dtgtableware" and pack.suffix and pack.negative
    expected = [f"{dish}_{level}" for dish in ("plate", "bowl") for level in LEVELS]
    assert list(pack.labels) == expected
    for cls in pack.classes:
        dish, level = cls.label.split("_", 1)
        assert cls.order == list(LEVELS).index(level)
        assert cls.metadata == {"dirtiness": LEVELS[level]}
        assert cls.clip_text == f"a photo of a {level.replace('_', ' ')} {dish}"
        table = pack.slot_table(cls)
        # each class's state vocabulary is the slot named like its label
        assert len(distinct_texts(table[cls.label])) == len(table[cls.label]) == 20
        assert all(f"{{{cls.label}}}" in t.text and f"{{{dish}}}" in t.text for t in cls.templates)
    assert len(distinct_texts(pack.slots["plate"])) == len(pack.slots["plate"]) >= 40
    assert len(distinct_texts(pack.slots["bowl"])) == len(pack.slots["bowl"]) >= 40
    assert len(distinct_texts(pack.slots["setting"])) == len(pack.slots["setting"]) == 30


def test_fruits_are_whole_and_uncut():
    pack = load_pack(pack_files()["fruits"])
    assert set(pack.labels) == {"orange", "peach", "kiwi", "tomato", "banana"}
    for word in ("sliced", "halved", "cut"):
        assert word in pack.negative
    assert "top-down" in pack.suffix and "whole" in pack.suffix
    for cls in pack.classes:
        assert len(distinct_texts(pack.slot_table(cls)["fruit"])) >= 8
        assert "sliced" in cls.negative


def test_steel_defect_labels():
    pack = load_pack(pack_files()["steel_defects"])
    assert list(pack.labels) == ["crazing", "inclusion", "patches", "pitted_surface",
                                 "rolled_in_scale", "scratches"]
    for cls in pack.classes:
        assert len(distinct_texts(pack.slot_table(cls)["defect"])) >= 8


@pytest.mark.parametrize("name", ["tableware", "fruits", "steel_defects"])
def test_no_stray_separators_in_shipped_prompts(name):
    pack = load_pack(pack_files()[name])
    sampler = Sampler(pack, "random", 1)
    for i in range(200):
        text = sampler.item(i).positive
        assert "  " not in text and ",," not in text and " ," not in text and not text.endswith(",")
