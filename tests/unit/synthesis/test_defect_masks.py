"""Defect masks for inpainting (nodes/synthesis/defect_masks): the min-width guarantee over many
masks of every shape (checked by an independent numpy-shift opening and by skimage's erosion of
each component), determinism within and across processes, the default shape of a label, the
shapes text, real masks (transformed, thin ones widened) and every refusal naming its file or line."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw
from skimage.measure import label as sk_label
from skimage.morphology import disk, erosion
from support.pkg import BOOTSTRAP, ROOT

from dtgen.nodes.synthesis.defect_masks import (SHAPES, DefectMaskSampler, default_shape, load_real_masks,
                                                parse_shapes)
from dtgen.nodes.synthesis.errors import SynthesisError

SHAPE_LABEL = {"crack": "crazing", "scratch": "scratches", "blob": "inclusion", "patch": "patches",
               "pits": "pitted_surface"}


def _footprint(d: int) -> list[tuple[int, int]]:
    """The disk of diameter d as (dy, dx) offsets, built here independently of the module."""
    c = (d - 1) / 2
    return [(y, x) for y in range(d) for x in range(d) if (y - c) ** 2 + (x - c) ** 2 <= (d / 2) ** 2]


def _shifted(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[y, x] = m[y + dy, x + dx], background outside."""
    out = np.zeros_like(m)
    h, w = m.shape
    out[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
        m[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


def _opening(m: np.ndarray, d: int) -> np.ndarray:
    offsets = _footprint(d)
    core = np.logical_and.reduce([_shifted(m, dy, dx) for dy, dx in offsets])
    return np.logical_or.reduce([_shifted(core, -dy, -dx) for dy, dx in offsets])


def assert_min_width(m: np.ndarray, meta: dict, d: int, size: tuple[int, int]) -> None:
    w, h = size
    assert m.shape == (h, w) and m.dtype == bool and m.any(), meta
    ys, xs = np.nonzero(m)
    x, y, bw, bh = meta["bbox"]
    assert (x, y, bw, bh) == (xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1) and meta["area"] == m.sum()
    assert 0 <= x and x + bw <= w and 0 <= y and y + bh <= h
    crop = np.pad(m[y:y + bh, x:x + bw], d)
    # every pixel lies in a disk of diameter d inside the mask (a mask cut at the border would fail)
    assert (_opening(crop, d) == crop).all(), meta
    labels = sk_label(crop, connectivity=2)
    r = (d - 1) // 2
    for k in range(1, labels.max() + 1):
        assert erosion(labels == k, disk(r)).any(), (meta, k)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size,min_width", [(256, 10), ((320, 200), 7), (128, 4)])
def test_every_mask_keeps_the_min_width_and_fits(shape, size, min_width):
    sampler = DefectMaskSampler(size, shapes={"x": shape}, seed=11, min_width=min_width)
    dims = (size, size) if isinstance(size, int) else size
    for i in range(40):
        m, meta = sampler.mask(i, "x")
        assert meta["shape"] == shape and meta["min_width"] == min_width
        assert_min_width(m, meta, min_width, dims)
    json.dumps(meta)


def test_large_defects_in_a_small_image_fit():
    sampler = DefectMaskSampler(64, seed=2, scale=(0.8, 1.0))
    for shape in SHAPES:
        for i in range(15):
            m, meta = sampler.mask(i, SHAPE_LABEL[shape])
            assert_min_width(m, meta, 10, (64, 64))


def test_thin_lines_are_widened_to_the_min_width():
    sampler = DefectMaskSampler(256, seed=4, line_width=(2, 5))
    for i in range(20):
        for label in ("scratches", "crazing"):
            m, meta = sampler.mask(i, label)
            assert meta["widened"] and meta["width_drawn"] < 10 and meta["width"] == 10
            assert_min_width(m, meta, 10, (256, 256))
    m, meta = DefectMaskSampler(256, seed=4, line_width=(14, 18)).mask(0, "scratches")
    assert not meta["widened"] and meta["width"] == meta["width_drawn"] >= 14


def test_a_mask_is_a_pure_function_of_seed_index_and_label():
    a, b = DefectMaskSampler(256, seed=5), DefectMaskSampler(256, seed=5)
    later = [b.mask(i, "patches")[0] for i in (9, 3)]             # another order, another object
    first = [a.mask(i, "patches")[0] for i in (3, 9)]
    assert (first[0] == later[1]).all() and (first[1] == later[0]).all()
    assert a.mask(3, "patches")[1] == b.mask(3, "patches")[1]
    assert not (a.mask(3, "patches")[0] == a.mask(4, "patches")[0]).all()
    assert not (a.mask(3, "patches")[0] == a.mask(3, "rolled_in_scale")[0]).all()
    assert not (a.mask(3, "patches")[0] == DefectMaskSampler(256, seed=6).mask(3, "patches")[0]).all()
    assert a.stream != DefectMaskSampler(256, seed=5, min_width=8).stream


def _digest(sampler, pairs) -> str:
    h = hashlib.sha256()
    for i, label in pairs:
        m, meta = sampler.mask(i, label)
        h.update(np.packbits(m).tobytes() + json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


PAIRS = [(i, label) for i in (0, 7, 12345) for label in ("crazing", "scratches", "inclusion", "patches",
                                                          "pitted_surface", "rolled_in_scale", "real")]


def test_masks_are_the_same_in_another_process(real_folder):
    kw = {"seed": 99, "real_masks": {"real": str(real_folder)}, "elastic": 0.1}
    here = _digest(DefectMaskSampler((300, 220), **kw), PAIRS)
    code = BOOTSTRAP + (
        "import sys, json\n"
        f"sys.path.insert(0, {str(ROOT / 'tests' / 'unit' / 'synthesis')!r})\n"
        "from test_defect_masks import _digest, PAIRS\n"
        "from dtgen.nodes.synthesis.defect_masks import DefectMaskSampler\n"
        f"print(_digest(DefectMaskSampler((300, 220), **{kw!r}), PAIRS))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                         cwd=str(ROOT / "tests"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == here


def test_default_shape_of_a_label():
    pack = yaml.safe_load((ROOT / "prompts" / "steel_defects.yaml").read_text())
    got = {c["label"]: default_shape(c["label"]) for c in pack["classes"]}
    assert got == {"crazing": "crack", "inclusion": "blob", "patches": "patch", "pitted_surface": "pits",
                   "rolled_in_scale": "patch", "scratches": "scratch"}
    assert [default_shape(x) for x in ("Surface_Crack", "oil_spot", "pit", "scale", "dent", "scratch_patch")] == \
        ["crack", "blob", "pits", "patch", "blob", "scratch"]                 # the first rule wins
    assert DefectMaskSampler(256).shape_of("pitted_surface") == "pits"


def test_shapes_text_overrides_the_default():
    text = "# steel\ncrazing: blob\n\n  scratches :  crack  # thin\n"
    assert parse_shapes(text) == {"crazing": "blob", "scratches": "crack"}
    sampler = DefectMaskSampler(256, shapes=text)
    assert [sampler.shape_of(x) for x in ("crazing", "scratches", "patches")] == ["blob", "crack", "patch"]
    assert sampler.mask(0, "crazing")[1]["shape"] == "blob"


@pytest.mark.parametrize("text,message", [
    ("crazing: blob\nscratches: star", "shapes line 2 ('scratches: star'): unknown shape 'star'"),
    ("crazing blob", "shapes line 1 ('crazing blob'): expected 'label: shape'"),
    ("a: blob\n\n: pits", "shapes line 3 (': pits'): the label is empty"),
    ("a: blob\na: pits", "shapes line 2 ('a: pits'): label 'a' is given twice"),
])
def test_bad_shapes_lines_are_refused_by_line(text, message):
    with pytest.raises(SynthesisError, match="^" + re.escape(message)):
        DefectMaskSampler(256, shapes=text)
    with pytest.raises(SynthesisError, match=re.escape("shapes['x']: unknown shape 'ring'")):
        parse_shapes({"x": "ring"})


@pytest.fixture
def real_folder(tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    line = Image.new("L", (300, 200))
    ImageDraw.Draw(line).line([(10, 10), (290, 150)], fill=255, width=1)      # 1 px: must be widened
    line.save(folder / "scratch.png")
    blob = Image.new("L", (120, 100))
    ImageDraw.Draw(blob).ellipse([10, 20, 100, 90], fill=255)
    ImageDraw.Draw(blob).line([(50, 50), (119, 99)], fill=200, width=2)        # a thin tail
    blob.save(folder / "blob_tail.png")
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 7 == 0).astype(np.uint16) * 60000).save(folder / "dots16.png")
    (folder / "notes.txt").write_text("ignored")
    return folder


def test_real_masks_are_transformed_and_keep_the_min_width(real_folder):
    sampler = DefectMaskSampler((320, 256), seed=1, real_masks=real_folder, elastic=0.15, scale=(0.2, 0.9))
    seen = set()
    for i in range(60):
        m, meta = sampler.mask(i, "any_label")
        assert meta["shape"] == "real" and meta["real_sha256"]
        seen.add(meta["real_mask"])
        assert_min_width(m, meta, 10, (320, 256))
        if meta["real_mask"] == "scratch.png":
            assert meta["widened"]
    assert seen == {"scratch.png", "blob_tail.png", "dots16.png"}
    per_label = DefectMaskSampler(256, real_masks={"inclusion": real_folder})
    assert per_label.shape_of("inclusion") == "real" and per_label.shape_of("scratches") == "scratch"


def test_real_masks_are_identified_by_content_not_path(real_folder, tmp_path):
    here = DefectMaskSampler(256, seed=3, real_masks=real_folder)
    moved = real_folder.rename(tmp_path / "elsewhere")
    there = DefectMaskSampler(256, seed=3, real_masks=moved)
    assert here.stream == there.stream and (here.mask(4, "x")[0] == there.mask(4, "x")[0]).all()
    (moved / "blob_tail.png").write_bytes((moved / "scratch.png").read_bytes())
    assert DefectMaskSampler(256, seed=3, real_masks=moved).stream != here.stream


def _png(path, array):
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("case,message", [
    ("missing", "folder of real masks does not exist"),
    ("no_png", "folder holds no mask PNG"),
    ("garbage", "cannot be read as a PNG mask"),
    ("empty", "mask is empty"),
    ("full", "mask is defect everywhere"),
    ("subfolder", "is a symlink or folder"),
])
def test_bad_real_masks_are_refused_naming_the_file(tmp_path, case, message):
    folder = tmp_path / "masks"
    named = folder
    if case != "missing":
        folder.mkdir()
        (folder / "readme.txt").write_text("x")
    if case == "garbage":
        named = folder / "broken.png"
        named.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif case == "empty":
        named = _png(folder / "zero.png", np.full((20, 30), 127, np.uint8))   # > 127 is defect: none
    elif case == "full":
        named = _png(folder / "ones.png", np.full((20, 30), 255, np.uint8))
    elif case == "subfolder":
        named = folder / "nested"
        named.mkdir()
    if case in ("garbage", "empty", "full", "subfolder"):
        _png(folder / "a_good.png", (np.eye(30) * 255).astype(np.uint8))
    with pytest.raises(SynthesisError, match=f"^{re.escape(str(named))}: .*{message}"):
        DefectMaskSampler(256, real_masks=folder)
    if case == "empty":
        with pytest.raises(SynthesisError, match="zero.png"):
            load_real_masks(folder)


@pytest.mark.parametrize("kwargs,message", [
    ({"size": 128, "scale": (0.05, 0.5)}, "scale low 0.05 x shorter side 128 px = 6 px leaves no room"),
    ({"size": 128, "min_width": 0}, "min_width must be an integer in 1..256"),
    ({"size": 32}, "size must be an integer in 64..4096"),
    ({"size": (128, 100, 3)}, "size must be a (width, height) pair"),
    ({"size": 128, "scale": (0.6, 0.3)}, "scale low must not exceed high"),
    ({"size": 128, "elastic": 0.5}, "elastic must be a number in 0.0..0.2"),
    ({"size": 128, "shapes": 3}, "shapes must be text or a dict"),
])
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(SynthesisError, match="^" + re.escape(message)):
        DefectMaskSampler(**kwargs)


def test_bad_index_or_label_is_refused():
    sampler = DefectMaskSampler(256)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(SynthesisError, match="mask index must be an integer"):
            sampler.mask(bad, "x")
    with pytest.raises(SynthesisError, match="label must be a non-empty string"):
        sampler.mask(0, " ")
    assert (sampler.mask(np.int64(2), "x")[0] == sampler.mask(2, "x")[0]).all()
