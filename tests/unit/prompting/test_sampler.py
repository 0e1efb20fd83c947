"""The prompt sampler: pure, deterministic, balanced, exhaustive, O(1) random access."""
import json
import os
import subprocess
import sys
from collections import Counter
from itertools import islice

import pytest

from dtgen.nodes.prompting.pack import PromptPackError, load_pack, parse_pack
from dtgen.nodes.prompting.sampler import MODES, SEED_BITS, PromptItem, Sampler, tidy
from support.pkg import BOOTSTRAP, ROOT

TABLEWARE = str(ROOT / "prompts" / "tableware.yaml")

# Nested slots, two templates, a slot used twice, a weight-0 entry, classes of different sizes,
# and every expansion spelled differently so that texts identify combinations.
NESTED = """\
version: 1
name: nested
slots:
  color: [red, green, {text: blue, weight: 3}, {text: never, weight: 0}]
  shade: [dark, pale]
  thing: ["{color} cup", plate, "{shade} {color} bowl"]
  place: [on oak, on steel, in box]
classes:
  - label: first
    templates: ["A {thing} {place}", "B {color} and {color}"]
  - label: second
    templates: ["C {thing}"]
  - label: third
    templates: ["D {shade}"]
"""


def class_named(pack, label):
    return {c.label: c for c in pack.classes}[label]


def indices_of(sampler, label, n):
    """The first ``n`` item indices of class ``label``, by asking ``label_of`` index after index."""
    return list(islice((i for i in range(sampler.total) if sampler.label_of(i) == label), n))


def enumerate_pack(pack, label):
    """Every expansion of a class by brute force, straight from the pack data (not the sampler)."""
    table = pack.slot_table(class_named(pack, label))

    def expand(text):
        results = [""]
        rest = text
        while "{" in rest:
            before, _, tail = rest.partition("{")
            name, _, rest = tail.partition("}")
            options = [o for e in table[name] if e.weight > 0 for o in expand(e.text)]
            results = [r + before + o for r in results for o in options]
        return [r + rest for r in results]

    return [o for t in class_named(pack, label).templates if t.weight > 0 for o in expand(t.text)]


@pytest.fixture(scope="module")
def tableware():
    return load_pack(TABLEWARE)


@pytest.fixture(scope="module")
def nested():
    return parse_pack(NESTED, "nested.yaml")


def as_plain(item):
    return {"index": item.index, "label": item.label, "positive": item.positive,
            "negative": item.negative, "seed": item.seed, "metadata": item.metadata}


PROBE = [0, 1, 2, 7, 999, 123_456, 10 ** 9]


def test_items_identical_in_separate_processes(tableware):
    code = BOOTSTRAP + (
        "import json\n"
        "from dtgen.nodes.prompting.pack import load_pack\n"
        "from dtgen.nodes.prompting.sampler import Sampler\n"
        f"pack = load_pack({TABLEWARE!r})\n"
        "out = {}\n"
        "for mode in ('balanced', 'random', 'exhaustive'):\n"
        "    s = Sampler(pack, mode, seed=424242)\n"
        f"    out[mode] = [s.item(i) for i in {PROBE!r} if i < s.total]\n"
        "print(json.dumps({m: [{'index': it.index, 'label': it.label, 'positive': it.positive,\n"
        "                       'negative': it.negative, 'seed': it.seed, 'metadata': it.metadata}\n"
        "                      for it in items] for m, items in out.items()}, sort_keys=True))\n"
    )
    runs = []
    for hash_seed in ("1", "2"):   # different str hashing in each process
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, timeout=120, check=True)
        runs.append(json.loads(done.stdout))
    here = {mode: [as_plain(Sampler(tableware, mode, seed=424242).item(i))
                   for i in PROBE if i < Sampler(tableware, mode, 424242).total] for mode in MODES}
    assert runs[0] == runs[1]
    assert runs[0] == json.loads(json.dumps(here, sort_keys=True))


def test_item_is_pure_and_independent_of_access_order(tableware):
    a, b = Sampler(tableware, "random", 9), Sampler(tableware, "random", 9)
    forward = [as_plain(a.item(i)) for i in range(50)]
    backward = [as_plain(b.item(i)) for i in reversed(range(50))][::-1]
    assert forward == backward
    assert as_plain(a.item(25)) == forward[25]
    assert a.items(10, 5) == [a.item(i) for i in range(10, 15)]


def test_different_seeds_give_different_prompts(tableware):
    one = [Sampler(tableware, "balanced", 1).item(i).positive for i in range(40)]
    two = [Sampler(tableware, "balanced", 2).item(i).positive for i in range(40)]
    assert one != two


def test_every_prefix_of_a_balanced_run_is_balanced(tableware):
    for classes in (None, ["bowl_clean", "plate_heavily_dirty", "plate_clean"]):
        sampler = Sampler(tableware, "balanced", 3, classes=classes)
        counts = Counter({label: 0 for label in sampler.labels})
        for i in range(300):
            counts[sampler.item(i).label] += 1
            assert max(counts.values()) - min(counts.values()) <= 1, (classes, i)


def test_class_subset_keeps_pack_order_and_names_unknown_labels(tableware):
    sampler = Sampler(tableware, "balanced", 0, classes=["bowl_clean", "plate_clean"])
    assert sampler.labels == ("plate_clean", "bowl_clean")
    assert {sampler.item(i).label for i in range(20)} == {"plate_clean", "bowl_clean"}
    only_bowls = Sampler(tableware, "random", 0, ["bowl_clean"])
    assert {only_bowls.item(i).label for i in range(20)} == {"bowl_clean"}
    assert Sampler(tableware, "exhaustive", 0, ["plate_clean"]).total == 2 * 40 * 20 * 30
    with pytest.raises(PromptPackError, match="'plate_shiny'"):
        Sampler(tableware, "balanced", 0, classes=["plate_clean", "plate_shiny"])


def test_exhaustive_yields_every_combination_exactly_once(nested):
    sampler = Sampler(nested, "exhaustive", 5)
    expected = [text for label in nested.labels for text in enumerate_pack(nested, label)]
    assert len(set(expected)) == len(expected)          # texts identify combinations
    assert sampler.total == len(expected) == sum(sampler.class_totals.values())
    produced = [sampler.item(i).positive for i in range(sampler.total)]
    assert sorted(produced) == sorted(expected)
    assert not any("never" in text for text in produced)   # weight 0: never chosen
    with pytest.raises(PromptPackError, match=f"has {sampler.total} combinations"):
        sampler.item(sampler.total)


def test_exhaustive_interleaves_classes_while_each_has_items(nested):
    sampler = Sampler(nested, "exhaustive", 0)
    labels = [sampler.item(i).label for i in range(sampler.total)]
    sizes = sampler.class_totals
    smallest = min(sizes.values())
    assert labels[:3 * smallest] == list(nested.labels) * smallest
    for label in nested.labels:
        assert labels.count(label) == sizes[label]


def test_early_exhaustive_items_cover_every_slot_value(tableware, nested):
    sampler = Sampler(tableware, "exhaustive", 0)
    for label in tableware.labels:
        table = tableware.slot_table(class_named(tableware, label))
        dish = label.split("_")[0]
        wanted = {dish: table[dish], label: table[label], "setting": table["setting"]}
        window = 2 * max(len(v) for v in wanted.values())       # two templates x biggest vocabulary
        seen = {name: set() for name in wanted}
        for i in indices_of(sampler, label, window):
            for name in wanted:
                seen[name].add(sampler.item(i).metadata["slots"][name])
        for name, entries in wanted.items():
            assert seen[name] == {e.text for e in entries}, (label, name)

    # Nested: within 2 templates x 3 entries, every entry of thing, place and color shows up.
    small = Sampler(nested, "exhaustive", 0, classes=["first"])
    early = [small.item(i).metadata["slots"] for i in range(2 * 3)]
    assert {s["thing"].split()[-1] for s in early if "thing" in s} == {"cup", "plate", "bowl"}
    assert {s["place"] for s in early if "place" in s} == {"on oak", "on steel", "in box"}
    assert {v for s in early for k, v in s.items() if k.startswith("color")} == {"red", "green", "blue"}


def test_random_mode_draws_classes_and_entries_by_weight():
    pack = parse_pack("version: 1\nname: w\nslots:\n  c: [x, {text: y, weight: 3}, {text: z, weight: 0}]\n"
                      "classes:\n  - label: a\n    templates: ['{c}']\n"
                      "  - label: b\n    weight: 3\n    templates: ['{c}']\n")
    sampler = Sampler(pack, "random", 11)
    items = [sampler.item(i) for i in range(4000)]
    share_b = sum(item.label == "b" for item in items) / len(items)
    share_y = sum(item.positive == "y" for item in items) / len(items)
    assert 0.70 < share_b < 0.80 and 0.70 < share_y < 0.80
    assert not any(item.positive == "z" for item in items)


def test_seeds_fit_ksampler_and_depend_on_base_seed_and_index_only(tableware):
    fruits = load_pack(str(ROOT / "prompts" / "fruits.yaml"))
    for base in (0, 1, 2 ** 64 - 1):
        seeds = [Sampler(tableware, "balanced", base).item(i).seed for i in range(2000)]
        assert all(0 <= s < 2 ** SEED_BITS <= 2 ** 64 for s in seeds)
        assert len(set(seeds)) == len(seeds)
    assert Sampler(tableware, "balanced", 5).item(7).seed == Sampler(fruits, "random", 5).item(7).seed
    assert Sampler(tableware, "balanced", 5).item(7).seed != Sampler(tableware, "balanced", 6).item(7).seed
    for bad in (-1, 2 ** 64, True, 1.5, "3"):
        with pytest.raises(PromptPackError, match="seed"):
            Sampler(tableware, "balanced", bad)


def test_item_ten_to_the_twelfth(tableware):
    big_slots = "\n".join(f"  s{k}: [" + ", ".join(f"w{k}_{e}" for e in range(30)) + "]" for k in range(9))
    template = " ".join(f"{{s{k}}}" for k in range(9))
    big = parse_pack(f"version: 1\nname: big\nslots:\n{big_slots}\nclasses:\n"
                     f"  - label: a\n    templates: ['{template}']\n")
    sampler = Sampler(big, "exhaustive", 0)
    assert sampler.total == 30 ** 9 > 10 ** 12
    far = sampler.item(10 ** 12)
    assert far.index == 10 ** 12 and far.positive.count(" ") == 8
    assert far.positive != sampler.item(10 ** 12 + 1).positive
    assert as_plain(far) == as_plain(Sampler(big, "exhaustive", 0).item(10 ** 12))
    balanced = Sampler(tableware, "balanced", 0).item(10 ** 12)
    assert balanced.label == tableware.labels[10 ** 12 % 8]
    assert Sampler(tableware, "random", 0).item(10 ** 12).label in tableware.labels


def test_label_of_matches_the_items(tableware, nested):
    for mode in MODES:
        pack = nested if mode == "exhaustive" else tableware
        sampler = Sampler(pack, mode, 4)
        limit = sampler.total if mode == "exhaustive" else 400
        assert [sampler.label_of(i) for i in range(limit)] == [sampler.item(i).label for i in range(limit)], mode


def test_metadata_names_pack_class_mode_and_choices(tableware):
    item = Sampler(tableware, "balanced", 77).item(10)
    md = item.metadata
    assert isinstance(item, PromptItem) and item.label == "plate_moderately_dirty"
    assert md["pack"] == "tableware" and md["pack_hash"] == tableware.pack_hash
    assert md["label"] == item.label and md["class_index"] == 2 and md["order"] == 2
    assert md["class_metadata"] == {"dirtiness": 0.6}
    assert md["clip_text"] == "a photo of a moderately dirty plate"
    assert (md["mode"], md["base_seed"], md["index"], md["seed"]) == ("balanced", 77, 10, item.seed)
    assert set(md["slots"]) == {"plate", "plate_moderately_dirty", "setting"}
    assert all(text in item.positive for text in md["slots"].values())
    assert item.positive.startswith("dtgtableware, ") and item.positive.endswith(tableware.suffix)
    md["class_metadata"]["dirtiness"] = 5     # items never share mutable state
    assert Sampler(tableware, "balanced", 77).item(10).metadata["class_metadata"] == {"dirtiness": 0.6}


def test_repeated_slot_and_default_clip_text(nested):
    sampler = Sampler(nested, "exhaustive", 0, classes=["first"])
    every = [sampler.item(i).metadata for i in range(sampler.total)]
    both = [md for md in every if md["template"] == 1]
    assert all(set(md["slots"]) == {"color", "color#2"} for md in both)
    assert len({(md["slots"]["color"], md["slots"]["color#2"]) for md in both}) == 9
    assert both[0]["clip_text"] == "a photo of first"


def test_positive_is_joined_without_doubled_separators():
    pack = parse_pack("version: 1\nname: j\ntrigger: tok\nsuffix: ' photo '\nslots:\n"
                      "  adj: ['', shiny]\n  where: ['', 'on a table']\nclasses:\n"
                      "  - label: a\n    templates: ['{adj} cup , {where}']\n")
    sampler = Sampler(pack, "exhaustive", 0)
    texts = {sampler.item(i).positive for i in range(sampler.total)}
    assert texts == {"tok, cup, photo", "tok, shiny cup, photo", "tok, cup, on a table, photo",
                     "tok, shiny cup, on a table, photo"}
    assert tidy(" , a  b,, c ,") == "a b, c"


def test_bad_requests_are_refused(tableware):
    with pytest.raises(PromptPackError, match="unknown mode 'sorted'"):
        Sampler(tableware, "sorted", 0)
    sampler = Sampler(tableware, "balanced", 0)
    for bad in (-1, 1.0, True, "3"):
        with pytest.raises(PromptPackError, match="item index"):
            sampler.item(bad)
    with pytest.raises(PromptPackError):
        Sampler(tableware, "exhaustive", 0).items(sampler.total - 1, 2)


def test_items_needing_more_than_one_digest_of_draws():
    slots = "\n".join(f"  s{k}: [a{k}, b{k}]" for k in range(20))
    template = " ".join(f"{{s{k}}}" for k in range(20))
    pack = parse_pack(f"version: 1\nname: deep\nslots:\n{slots}\nclasses:\n"
                      f"  - label: a\n    templates: ['{template}']\n")
    sampler = Sampler(pack, "random", 3)
    items = [sampler.item(i) for i in range(64)]
    assert all(len(item.metadata["slots"]) == 20 for item in items)
    for k in (0, 15, 16, 19):     # draws from the first and from the second digest both vary
        assert {item.metadata["slots"][f"s{k}"] for item in items} == {f"a{k}", f"b{k}"}
    again = Sampler(pack, "random", 3)
    assert [as_plain(item) for item in items] == [as_plain(again.item(i)) for i in range(64)]


def test_stream_names_pack_mode_seed_and_classes(tableware):
    """Items of one stream are the same items; any input that changes them changes the stream."""
    base = Sampler(tableware, "balanced", 0)
    assert base.item(3).metadata["stream"] == base.stream == Sampler(tableware, "balanced", 0).stream
    others = [Sampler(tableware, "balanced", 1), Sampler(tableware, "random", 0),
              Sampler(tableware, "balanced", 0, classes=list(tableware.labels[:2]))]
    assert len({base.stream, *(s.stream for s in others)}) == 4
    edited = parse_pack(open(TABLEWARE).read().replace("dtgtableware", "dtgtableware2"), source="edited")
    assert Sampler(edited, "balanced", 0).stream != base.stream


def test_summary_names_the_first_items_and_the_rest(tableware):
    from dtgen.nodes.prompting.sampler import summary

    items = Sampler(tableware, "balanced", 3).items(0, 7)
    text = summary(items, shown=2, note="resume mode: ds, 5 per class").splitlines()
    assert text[0] == "7 item(s) (resume mode: ds, 5 per class)"
    assert text[1].startswith(f"#0 {items[0].label}: {items[0].positive[:20]}")
    assert text[-1] == "... and 5 more" and len(text) == 4
