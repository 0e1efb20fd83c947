"""Prompt-pack parsing and validation: every error names file, YAML path and line."""
import dataclasses
import json
import os
import textwrap

import pytest

from dtgen.nodes.common.labels import label_problem
from dtgen.nodes.prompting.pack import PromptPackError, load_pack, parse_pack, split_template

GOOD = """\
version: 1
name: demo
trigger: tok
suffix: photo
negative: blurry
slots:
  color: [red, {text: green, weight: 2}]
  thing: ["{color} cup", plate]
classes:
  - label: a_one
    templates: ["{thing} on a table"]
    metadata: {dirtiness: 0.25}
    order: 1
  - label: b_two
    templates: ["{thing}"]
    negative_extra: cartoon
    clip_text: a photo of b
    weight: 2
"""


def lines(text):
    return textwrap.dedent(text)


def error_of(text, source="pack.yaml"):
    with pytest.raises(PromptPackError) as info:
        parse_pack(lines(text), source)
    return info.value


def test_good_pack_parses_into_immutable_pack():
    pack = parse_pack(GOOD, "demo.yaml")
    assert pack.name == "demo" and pack.labels == ("a_one", "b_two")
    a, b = pack.classes
    assert a.metadata["dirtiness"] == 0.25 and a.order == 1
    assert a.negative == "blurry" and b.negative == "blurry, cartoon"
    assert a.clip_text == "a photo of a one" and b.clip_text == "a photo of b"
    assert pack.slots["color"][1].weight == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        pack.name = "other"
    with pytest.raises(TypeError):
        pack.slots["color"] = ()


def test_pack_hash_ignores_formatting_but_not_content():
    reformatted = GOOD.replace("color: [red, {text: green, weight: 2}]",
                               "color:\n    - red   # comment\n    - text: green\n      weight: 2.0")
    assert parse_pack(reformatted).pack_hash == parse_pack(GOOD).pack_hash
    assert parse_pack(GOOD.replace("red", "blue")).pack_hash != parse_pack(GOOD).pack_hash


@pytest.mark.parametrize("text, path, line, words", [
    ("version: 1\nname: x\nclasses: [\n", None, 4, "malformed YAML"),
    ("version: 2\nname: x\nclasses: [{label: a, templates: [t]}]\n", "version", 1, "version 2"),
    ("name: x\nclasses: [{label: a, templates: [t]}]\n", None, 1, "missing 'version'"),
    ("version: 1\nname: x\nclasses:\n  - label: a\n    templates: ['{nope} here']\n",
     "classes[0].templates[0]", 5, "unknown slot {nope}"),
    ("version: 1\nname: x\nslots:\n  s: [ok, '{t}']\n  t: ['{s} again']\n"
     "classes:\n  - label: a\n    templates: ['{s}']\n", None, None, "reference cycle"),
    ("version: 1\nname: x\nslots:\n  s: []\nclasses:\n  - label: a\n    templates: ['{s}']\n",
     "slots.s", 4, "empty"),
    ("version: 1\nname: x\nslots:\n  s:\n    - a\n    - {text: b, weight: -1}\n"
     "classes:\n  - label: a\n    templates: ['{s}']\n", "slots.s[1].weight", 6, ">= 0"),
    ("version: 1\nname: x\nslots:\n  s:\n    - {text: b, weight: heavy}\n"
     "classes:\n  - label: a\n    templates: ['{s}']\n", "slots.s[0].weight", 5, "must be a number"),
    ("version: 1\nname: x\nclasses:\n  - label: a\n    templates: [t]\n  - label: a\n"
     "    templates: [u]\n", "classes[1].label", 6, "duplicate label 'a'"),
    ("version: 1\nname: x\nclasses:\n  - label: Plate\n    templates: [t]\n  - label: plate\n"
     "    templates: [u]\n", "classes[1].label", 6, "case-insensitive"),
    ("version: 1\nname: x\nclasses:\n  - label: a\n", "classes[0]", 4, "no 'templates'"),
    ("version: 1\nname: x\nclasses:\n  - label: a\n    templates: []\n",
     "classes[0].templates", 5, "templates is empty"),
    ("version: 1\nname: x\nclasses:\n  - label: a\n    templates: [t]\n    weight: 0\n",
     "classes[0].weight", 6, "> 0"),
    ("version: 1\nname: x\nclasses:\n  - label: a\n    templtes: [t]\n",
     "classes[0].templtes", 5, "did you mean 'templates'"),
    ("version: 1\nname: x\nname: y\nclasses:\n  - label: a\n    templates: [t]\n",
     None, 3, "'name' appears twice"),
    ("version: 1\nname: x\nclasses:\n  - label: a\n    templates: ['{a|b}']\n",
     "classes[0].templates[0]", 5, "not a slot reference"),
    ("version: 1\nname: x\nclasses:\n  - label: a\n    templates: [t]\n    metadata: {dirt: lots}\n",
     "classes[0].metadata.dirt", 6, "finite number"),
    ("version: 1\nname: x\nslots:\n  s: [{text: a, weight: 0}]\nclasses:\n  - label: a\n"
     "    templates: ['{s}']\n", "slots.s", 4, "weight 0"),
])
def test_errors_name_file_path_and_line(text, path, line, words):
    err = error_of(text)
    assert err.file == "pack.yaml"
    assert words in err.message
    if path is not None:
        assert err.path == path
    if line is not None:
        assert err.line == line
    assert str(err).startswith("pack.yaml:")


def test_cycle_error_names_the_chain_and_location():
    err = error_of("version: 1\nname: x\nslots:\n  s: [ok, '{t}']\n  t: ['{s} again']\n"
                   "classes:\n  - label: a\n    templates: ['{s}']\n")
    assert "s -> t -> s" in err.message
    assert err.path == "slots.t[0]" and err.line == 5


def test_cycle_through_class_override_is_found():
    err = error_of("version: 1\nname: x\nslots:\n  s: ['{t}']\n  t: [plain]\nclasses:\n"
                   "  - label: a\n    templates: ['{s}']\n    slots:\n      t: ['{s} loop']\n")
    assert "reference cycle" in err.message and "'a'" in err.message
    assert err.path == "classes[0].slots.t[0]" and err.line == 10


def test_class_override_replaces_pack_slot_for_that_class_only():
    pack = parse_pack(lines("""\
        version: 1
        name: x
        slots:
          shape: ['{color} round']
        classes:
          - label: a
            templates: ['{shape}']
            slots: {color: [red]}
          - label: b
            templates: ['{shape}']
            slots: {color: [blue]}
        """))
    assert pack.slot_table(pack.classes[0])["color"][0].text == "red"
    assert pack.slot_table(pack.classes[1])["color"][0].text == "blue"


def test_pack_slot_with_slot_defined_nowhere_is_an_error():
    err = error_of("version: 1\nname: x\nslots:\n  unused: ['{ghost}']\nclasses:\n"
                   "  - label: a\n    templates: [t]\n")
    assert "unknown slot {ghost}" in err.message and err.path == "slots.unused[0]" and err.line == 4


@pytest.mark.parametrize("label", [
    "..", "a/b", "a\\b", "/abs", "C:", "c:data", "CON", "con", "nul.txt", "COM1", "lpt9", "a\tb",
    "a\x00", " lead", "trail ", ".hidden", "trail.", "a..b", "-dash", "platе",  # Cyrillic е
    "x" * 101, "",
])
def test_unsafe_labels_are_refused(label):
    assert label_problem(label) is not None
    # JSON strings are valid YAML double-quoted scalars, so any character can be written.
    err = error_of(f"version: 1\nname: x\nclasses:\n  - templates: [t]\n    label: {json.dumps(label)}\n")
    assert err.path == "classes[0].label" and err.line == 5


@pytest.mark.parametrize("label", ["plate_clean", "rolled_in_scale", "v1.2", "A-b_9", "CONSOLE", "com10"])
def test_safe_labels_pass(label):
    assert label_problem(label) is None


def test_split_template():
    assert split_template("a {x} b {y_2}") == (("a ", " b ", ""), ("x", "y_2"))
    assert split_template("plain") == (("plain",), ())
    for bad in ["a {x", "a } b", "{}", "{1x}", "{a {b}}"]:
        with pytest.raises(ValueError):
            split_template(bad)


def test_load_pack_reports_file_and_caches_unchanged_files(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(GOOD, encoding="utf-8")
    first = load_pack(str(path))
    assert load_pack(str(path)) is first           # unchanged: served from the cache
    path.write_text(GOOD.replace("red", "crimson"), encoding="utf-8")
    stamp = os.stat(path).st_mtime_ns + 10 ** 9     # a new mtime even on coarse-clock file systems
    os.utime(path, ns=(stamp, stamp))
    second = load_pack(str(path))
    assert second is not first and second.slots["color"][0].text == "crimson"

    broken = tmp_path / "broken.yaml"
    broken.write_text(GOOD.replace("templates: [\"{thing}\"]", "templates: [\"{thing\"]"), encoding="utf-8")
    with pytest.raises(PromptPackError) as info:
        load_pack(str(broken))
    assert info.value.file == str(broken) and info.value.path == "classes[1].templates[0]"
    assert info.value.line == 15
    with pytest.raises(PromptPackError) as info:
        load_pack(str(tmp_path / "missing.yaml"))
    assert "missing.yaml" in str(info.value)


def test_a_merge_key_may_override_a_merged_key_but_a_key_written_twice_is_refused():
    """``<<: *base`` then ``label: b``: YAML's merge, the written key wins (not "key 'label' appears
    twice": it is written once); the same key written twice in one mapping is still refused."""
    text = ("version: 1\nname: x\nclasses:\n  - &base {label: a, templates: [t], weight: 2}\n"
            "  - <<: *base\n    label: b\n")
    pack = parse_pack(text)
    assert [(c.label, c.weight) for c in pack.classes] == [("a", 2.0), ("b", 2.0)]
    with pytest.raises(PromptPackError, match=r"classes\[1\]: key 'label' appears twice"):
        parse_pack(text + "    label: c\n")
