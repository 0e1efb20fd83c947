"""Copy-paste items (nodes/synthesis/copy_paste): determinism across processes and folders, the
placement rules (no overlap, occlusion, fallbacks), masks and boxes against an independent
recomputation with Pillow, exact pixels without jitter or blending, class cycling, validation."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from synthesis_material import save
from support.pkg import BOOTSTRAP

from dtgen.nodes.common.identity import item_id
from dtgen.nodes.synthesis.copy_paste import CopyPaste, summary
from dtgen.nodes.synthesis.cutouts import load_cutouts
from dtgen.nodes.synthesis.errors import SynthesisError

BUSY = {"objects": (1, 4), "rotation": 30.0, "jitter": 0.3, "blend": "gaussian", "sigma": 2.0, "max_overlap": 0.3,
        "seed": 7}


@pytest.fixture(scope="module")
def cutouts(material):
    return load_cutouts(material[0])


def _by_name(cutouts) -> dict:
    return {c.name: c for pool in cutouts.values() for c in pool}


def _fingerprint(item) -> dict:
    return {"image": hashlib.sha256(item.image.tobytes()).hexdigest(),
            "map": hashlib.sha256(item.instance_map.tobytes()).hexdigest(),
            "dtypes": [str(item.image.dtype), str(item.instance_map.dtype)],
            "boxes": [list(b.bbox) for b in item.boxes], "metadata": item.metadata}


def _transformed(cutout, params) -> tuple[np.ndarray, np.ndarray]:
    """(premultiplied rgb, alpha) of a placed cutout, recomputed here with Pillow as documented:
    flip, bilinear resize, bilinear rotation with the canvas expanded, crop to alpha > 0."""
    planes = [Image.fromarray(np.ascontiguousarray(cutout.rgb[..., c] * cutout.alpha)) for c in range(3)]
    planes.append(Image.fromarray(np.ascontiguousarray(cutout.alpha)))
    if params["flip"]:
        planes = [p.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in planes]
    if tuple(params["resized"]) != planes[0].size:
        planes = [p.resize(tuple(params["resized"]), Image.Resampling.BILINEAR) for p in planes]
    if params["angle"]:
        planes = [p.rotate(params["angle"], resample=Image.Resampling.BILINEAR, expand=True) for p in planes]
    arrays = [np.asarray(p, dtype=np.float32) for p in planes]
    ys, xs = np.nonzero(arrays[3] > 0)
    crop = np.s_[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return np.stack([a[crop] for a in arrays[:3]], axis=2), np.clip(arrays[3][crop], 0, 1)


def _expected_map(item, cutouts) -> np.ndarray:
    """Paint every placed object's hard alpha in paste order, drop the hidden, renumber."""
    names = _by_name(cutouts)
    size = item.metadata["size"]
    painted = np.zeros((size, size), np.int32)
    for k, p in enumerate(item.metadata["placements"], start=1):
        _, alpha = _transformed(names[p["cutout"]], p)
        h, w = alpha.shape
        assert [w, h] == p["patch"]
        painted[p["y"]:p["y"] + h, p["x"]:p["x"] + w][alpha > 0.5] = k
    out = np.zeros_like(painted)
    for new, old in enumerate([k for k in range(1, painted.max() + 1) if (painted == k).any()], start=1):
        out[painted == old] = new
    return out


def _background(cp, item) -> np.ndarray:
    j = [b.name for b in cp.backgrounds.entries].index(item.metadata["background"])
    return cp.backgrounds.fitted(j, cp.size)


def test_item_is_the_same_in_another_process(material, cutouts):
    cp = CopyPaste(cutouts, material[1], 256, **BUSY)
    here = json.loads(json.dumps(_fingerprint(cp.item(3))))
    code = BOOTSTRAP + (
        "import hashlib, json, sys\n"
        "from dtgen.nodes.synthesis.copy_paste import CopyPaste\n"
        "from dtgen.nodes.synthesis.cutouts import load_cutouts\n"
        f"cp = CopyPaste(load_cutouts(sys.argv[1]), sys.argv[2], 256, **{BUSY!r})\n"
        "it = cp.item(3)\n"
        "print(json.dumps({'image': hashlib.sha256(it.image.tobytes()).hexdigest(),\n"
        "  'map': hashlib.sha256(it.instance_map.tobytes()).hexdigest(),\n"
        "  'dtypes': [str(it.image.dtype), str(it.instance_map.dtype)],\n"
        "  'boxes': [list(b.bbox) for b in it.boxes], 'metadata': it.metadata}))\n")
    out = subprocess.run([sys.executable, "-c", code, str(material[0]), str(material[1])],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    there = json.loads(out.stdout.strip().splitlines()[-1])
    assert there == here
    assert here["metadata"]["objects_placed"] >= 1 and here["dtypes"] == ["float32", "uint16"]


def test_the_same_folders_moved_elsewhere_give_the_same_items(material, cutouts, tmp_path):
    cut = shutil.copytree(material[0], tmp_path / "a" / "my_cutouts")
    bg = shutil.copytree(material[1], tmp_path / "b" / "my_backgrounds")
    here, moved = CopyPaste(cutouts, material[1], 192, **BUSY), CopyPaste(cut, bg, 192, **BUSY)
    assert here.stream == moved.stream
    for i in range(6):
        assert _fingerprint(here.item(i)) == _fingerprint(moved.item(i))
    assert CopyPaste(cutouts, material[1], 192, **{**BUSY, "seed": 8}).stream != here.stream
    assert CopyPaste(cutouts, material[1], 192, **{**BUSY, "jitter": 0.2}).stream != here.stream


def test_an_item_does_not_depend_on_what_was_made_before(material, cutouts):
    a = CopyPaste(cutouts, material[1], 128, **BUSY)
    b = CopyPaste(cutouts, material[1], 128, **BUSY)
    a.item(9), a.item(0)
    assert _fingerprint(a.item(4)) == _fingerprint(b.item(4))
    assert np.array_equal(a.item(4).image, b.items(4, 1)[0].image)


def test_no_box_touches_another_when_overlap_is_zero(material, cutouts):
    cp = CopyPaste(cutouts, material[1], 256, objects=(2, 6), scale=(0.1, 0.45), rotation=40.0, seed=3)
    pairs = 0
    for i in range(60):
        item = cp.item(i)
        boxes = [b.bbox for b in item.boxes]
        assert len(boxes) == item.metadata["objects_placed"] == item.metadata["instances"]
        assert boxes == [tuple(p["box"]) for p in item.metadata["placements"]]   # nothing occluded
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                (x, y, w, h), (u, v, s, t) = boxes[a], boxes[b]
                iw, ih = min(x + w, u + s) - max(x, u), min(y + h, v + t) - max(y, v)
                assert iw <= 0 or ih <= 0, (i, boxes[a], boxes[b])
                pairs += 1
    assert pairs > 100


def test_the_mask_is_the_pasted_hard_alpha(material, cutouts):
    cp = CopyPaste(cutouts, material[1], 200, objects=(1, 1), scale=(0.2, 0.9), rotation=60.0, seed=11)
    names = _by_name(cutouts)
    for i in range(12):
        item = cp.item(i)
        (p,) = item.metadata["placements"]
        _, alpha = _transformed(names[p["cutout"]], p)
        expected = np.zeros((200, 200), bool)
        expected[p["y"]:p["y"] + alpha.shape[0], p["x"]:p["x"] + alpha.shape[1]] = alpha > 0.5
        assert np.array_equal(item.instance_map > 0, expected), i
        assert item.instance_map.max() == 1 and item.instance_labels == (item.label,)


def test_a_later_object_takes_exactly_its_pixels_from_an_earlier_one(material, cutouts):
    cp = CopyPaste(cutouts, material[1], 128, objects=(3, 6), scale=(0.15, 0.9), rotation=45.0,
                   max_overlap=1.0, seed=5)
    occluded = hidden = 0
    for i in range(80):
        item = cp.item(i)
        expected = _expected_map(item, cutouts)
        assert np.array_equal(item.instance_map, expected), i
        placements = item.metadata["placements"]
        hidden += sum(p["instance"] == 0 for p in placements)
        names = _by_name(cutouts)
        full = []
        for p in placements:
            _, alpha = _transformed(names[p["cutout"]], p)
            m = np.zeros((128, 128), bool)
            m[p["y"]:p["y"] + alpha.shape[0], p["x"]:p["x"] + alpha.shape[1]] = alpha > 0.5
            full.append(m)
        for k, p in enumerate(placements):
            later = np.zeros((128, 128), bool)
            for m in full[k + 1:]:
                later |= m
            visible = item.instance_map == p["instance"] if p["instance"] else np.zeros_like(later)
            assert np.array_equal(visible, full[k] & ~later), (i, k)
            occluded += bool((full[k] & later).any())
        assert item.metadata["instances"] == len(item.boxes) == len(item.instance_labels)
        assert [p["instance"] for p in placements if p["instance"]] == list(range(1, len(item.boxes) + 1))
    assert occluded > 20 and hidden >= 1, (occluded, hidden)


def test_boxes_are_tight_around_the_masks(material, cutouts):
    cp = CopyPaste(cutouts, material[1], 160, objects=(2, 5), max_overlap=0.5, rotation=90.0, seed=2)
    for i in range(30):
        item = cp.item(i)
        for inst in item.boxes:
            ys, xs = np.nonzero(item.instance_map == inst.id)
            assert inst.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert inst.area == len(ys) and inst.label == item.label


@pytest.mark.parametrize("label", ["cup", "cat"])
def test_without_jitter_or_blend_the_pasted_pixels_are_the_cutouts(material, cutouts, label):
    """Unscaled (scale = cutout side / size), unrotated: the cutout's own pixels, flipped or not."""
    cutout = cutouts[label][0]
    side = max(cutout.alpha.shape)
    cp = CopyPaste(cutouts, material[1], 4 * side, objects=(1, 1), scale=(0.25, 0.25), rotation=0.0,
                   classes=[label], seed=1)
    flips = set()
    for i in range(16):
        item = cp.item(i)
        (p,) = item.metadata["placements"]
        flips.add(p["flip"])
        rgb, alpha = cutout.rgb, cutout.alpha
        if p["flip"]:
            rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
        h, w = alpha.shape
        assert p["patch"] == [w, h] and p["resized"] == [w, h]
        bg = _background(cp, item)
        region = np.s_[p["y"]:p["y"] + h, p["x"]:p["x"] + w]
        pasted = item.image[region]
        opaque = alpha == 1
        assert opaque.sum() > 1000
        assert np.array_equal(pasted[opaque], rgb[opaque])                  # the cutout's exact pixels
        soft = (alpha > 0) & (alpha < 1)
        blend = rgb * alpha[..., None] + (1 - alpha[..., None]) * bg[region]
        np.testing.assert_allclose(pasted[soft], blend[soft], rtol=0, atol=1e-6)
        outside = np.ones(item.image.shape[:2], bool)
        outside[region] = alpha == 0
        assert np.array_equal(item.image[outside], bg[outside])              # the rest is the background
        assert np.array_equal(item.instance_map[region] > 0, alpha > 0.5)
        assert (label == "cat") == bool(soft.any())
    assert flips == {True, False}


def test_rotated_objects_are_composited_from_their_transformed_pixels(material, cutouts):
    cp = CopyPaste(cutouts, material[1], 192, objects=(1, 1), rotation=80.0, seed=4)
    names = _by_name(cutouts)
    for i in range(6):
        item = cp.item(i)
        (p,) = item.metadata["placements"]
        premult, alpha = _transformed(names[p["cutout"]], p)
        region = np.s_[p["y"]:p["y"] + alpha.shape[0], p["x"]:p["x"] + alpha.shape[1]]
        expected = premult + (1 - alpha[..., None]) * _background(cp, item)[region]
        np.testing.assert_allclose(item.image[region], np.clip(expected, 0, 1), rtol=0, atol=1e-6)


def test_gaussian_feathers_the_image_but_not_the_mask(material, cutouts):
    cutout = cutouts["cup"][0]
    side = cutout.alpha.shape[0]
    cp = CopyPaste(cutouts, material[1], 4 * side, objects=(1, 1), scale=(0.25, 0.25), rotation=0.0,
                   flip=False, classes=["cup"], blend="gaussian", sigma=2.0)
    item = cp.item(0)
    (p,) = item.metadata["placements"]
    region = np.s_[p["y"]:p["y"] + side, p["x"]:p["x"] + side]
    hard = cutout.alpha > 0.5
    assert np.array_equal(item.instance_map[region] > 0, hard)
    assert (item.instance_map > 0).sum() == hard.sum()
    bg, pasted = _background(cp, item)[region], item.image[region]
    assert np.array_equal(pasted[~hard], bg[~hard])                          # nothing painted outside
    edge = hard & ~np.pad(hard, 1)[2:, 1:-1]                                 # bottom edge of the disc
    assert not np.allclose(pasted[edge], cutout.rgb[edge], atol=1e-3)       # blended with the background
    core = np.zeros_like(hard)
    core[side // 2 - 20:side // 2 + 20, side // 2 - 20:side // 2 + 20] = True
    np.testing.assert_allclose(pasted[core], cutout.rgb[core], atol=1e-5)  # the inside is the cutout


def test_jitter_changes_the_colour_and_keeps_the_mask(material, cutouts):
    cutout = cutouts["cup"][0]
    side = cutout.alpha.shape[0]
    cp = CopyPaste(cutouts, material[1], 4 * side, objects=(1, 1), scale=(0.25, 0.25), rotation=0.0,
                   flip=False, classes=["cup"], jitter=0.5, seed=9)
    for i in range(4):
        item = cp.item(i)
        (p,) = item.metadata["placements"]
        assert all(0.5 <= f <= 1.5 for f in p["jitter"].values())
        region = np.s_[p["y"]:p["y"] + side, p["x"]:p["x"] + side]
        hard = cutout.alpha > 0.5
        assert np.array_equal(item.instance_map[region] > 0, hard)
        assert not np.allclose(item.image[region][hard], cutout.rgb[hard], atol=1e-3)
        assert 0 <= item.image.min() and item.image.max() <= 1


def test_too_many_objects_place_as_many_as_fit_and_say_so(material, cutouts):
    cp = CopyPaste(cutouts, material[1], 128, objects=(50, 50), scale=(0.3, 0.4), rotation=0.0)
    items = cp.items(0, 6)
    for item in items:
        m = item.metadata
        assert m["objects_requested"] == 50 and 1 <= m["objects_placed"] < 50
        assert len(m["not_placed"]) == 50 - m["objects_placed"] == 50 - len(item.boxes)
        assert all(name.startswith(item.label + "/") for name in m["not_placed"] + m["cutouts"])
    text = summary(items)
    assert f"of {6 * 50} requested" in text and "did not fit" in text


def test_the_first_object_falls_back_to_the_smallest_scale_unrotated(material, cutouts):
    cp = CopyPaste(cutouts, material[1], 96, objects=(2, 2), scale=(1.0, 1.0), rotation=45.0, flip=False)
    item = cp.item(0)
    (p,) = item.metadata["placements"]
    assert p["fallback"] and p["angle"] == 0.0 and max(p["patch"]) == 96
    assert item.metadata["objects_placed"] == 1 and len(item.metadata["not_placed"]) == 1


def test_a_cutout_that_vanishes_at_the_smallest_scale_is_named(material, tmp_path):
    root = shutil.copytree(material[0], tmp_path / "cut")
    dots = np.zeros((200, 200, 4), np.uint8)
    dots[..., :3] = 120
    dots[::4, ::4, 3] = 255                    # 1 pixel in 16: averaged away when scaled down
    path = save(root / "cup" / "dots.png", dots)
    with pytest.raises(SynthesisError, match=f"^{path}: keeps no pixel .* in a 128 x 128 image"):
        CopyPaste(load_cutouts(root), material[1], 128, scale=(0.05, 0.5))


def test_classes_cycle_balanced_in_a_seeded_order(material, cutouts):
    cp = CopyPaste(cutouts, material[1], 96, objects=(1, 1))
    n = len(cp.labels)
    labels = [cp.label_of(i) for i in range(300)]
    for start in range(0, 300, n):
        assert sorted(labels[start:start + n]) == sorted(cp.labels)
    for end in range(1, 300):
        counts = Counter(labels[:end])
        assert max(counts.values()) - min(counts.get(label, 0) for label in cp.labels) <= 1
    assert len({tuple(labels[s:s + n]) for s in range(0, 300, n)}) > 1        # not one fixed order
    other = CopyPaste(cutouts, material[1], 96, objects=(1, 1), seed=1)
    assert [other.label_of(i) for i in range(300)] != labels
    for i in range(6):
        item = cp.item(i)
        assert item.label == labels[i] and set(item.instance_labels) == {item.label}
        assert all(name.startswith(item.label + "/") for name in item.metadata["cutouts"])
    only = CopyPaste(cutouts, material[1], 96, classes=["cat", "cup"])
    assert only.labels == ("cat", "cup") and {only.item(i).label for i in range(4)} == {"cat", "cup"}


def test_metadata_and_the_dataset_item(material, cutouts):
    cp = CopyPaste(cutouts, material[1], 128, **BUSY)
    item = cp.item(2)
    m = item.metadata
    assert json.loads(json.dumps(m)) == m
    assert m["source"] == "copy_paste" and m["index"] == 2 and m["item_id"] == f"copy_paste:{cp.stream}:2"
    assert m["background"] in {"camera.png", "moon16.png", "rocket.jpg"} and len(m["background_sha256"]) == 64
    assert len(m["cutouts"]) == m["objects_placed"] == len(m["placements"])
    for p in m["placements"]:
        assert {"cutout", "scale", "angle", "flip", "x", "y", "box", "jitter", "instance"} <= set(p)
    scored = item.to_scored("a photo of a " + item.label)
    assert scored.instance_map is item.instance_map and scored.instance_labels == item.instance_labels
    assert item_id(scored) == item_id(cp.item(2).to_scored())


@pytest.mark.parametrize("kwargs, fragment", [
    ({"size": 63}, "size must be an integer in 64..4096"), ({"size": 4097}, "size must be"),
    ({"size": 256.0}, "size must be an integer"), ({"objects": (0, 1)}, "objects must be an integer in 1..50"),
    ({"objects": (1, 51)}, "objects must be"), ({"objects": (3, 2)}, "objects low must not exceed high"),
    ({"objects": "3"}, "objects must be a (low, high) pair"), ({"scale": (0.0, 0.5)}, "scale low 0.0 x size"),
    ({"scale": (0.2, 1.5)}, "scale must be a number in 0.0..1.0"), ({"rotation": -1}, "rotation must be"),
    ({"rotation": 181}, "rotation must be"), ({"max_overlap": 1.5}, "max_overlap must be"),
    ({"jitter": -0.1}, "jitter must be"), ({"jitter": float("nan")}, "jitter must be"),
    ({"blend": "poisson"}, "blend must be one of none, gaussian"), ({"sigma": 0}, "sigma must be"),
    ({"sigma": 25}, "sigma must be"), ({"seed": -1}, "seed must be"), ({"seed": 2 ** 64}, "seed must be"),
    ({"flip": "yes"}, "flip must be true or false"), ({"classes": ["dog"]}, "classes: unknown class 'dog'"),
])
def test_every_parameter_is_checked_by_name(material, cutouts, kwargs, fragment):
    args = {"size": 128, **kwargs}
    with pytest.raises(SynthesisError) as caught:
        CopyPaste(cutouts, material[1], **args)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_item_indices_are_checked(material, cutouts):
    cp = CopyPaste(cutouts, material[1], 96)
    for bad in (-1, 1.5, True, "3", 2 ** 63):
        with pytest.raises(SynthesisError, match="item index must be an integer"):
            cp.item(bad)
    assert cp.item(np.int64(1)).index == 1


def test_summary_counts_classes_and_objects(material, cutouts):
    cp = CopyPaste(cutouts, material[1], 128, objects=(2, 2), scale=(0.2, 0.3))
    text = summary(cp.items(0, 9), shown=2)
    lines = text.splitlines()
    assert lines[0] == "9 copy-paste item(s): 18 object(s) placed of 18 requested, 18 visible"
    assert lines[1:4] == ["astronaut: 3 item(s), 6 object(s)", "cat: 3 item(s), 6 object(s)",
                          "cup: 3 item(s), 6 object(s)"]
    assert lines[4].startswith("#0 ") and lines[-1] == "... and 7 more"
