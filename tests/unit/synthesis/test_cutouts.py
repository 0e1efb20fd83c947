"""Cutouts per class (nodes/synthesis/cutouts): both kinds (alpha, mask file), the crop to the
mask, conversions of grayscale / 16-bit / palette files, and every refusal naming its file."""
from __future__ import annotations

import os

import numpy as np
import pytest
from synthesis_material import CUP_RADIUS, disc, save
from PIL import Image
from skimage import data

from dtgen.nodes.fewshot.imageset import FewShotError
from dtgen.nodes.synthesis.cutouts import load_cutouts
from dtgen.nodes.synthesis.errors import SynthesisError


def test_both_kinds_load_cropped_to_their_mask(material):
    cutouts = load_cutouts(material[0])
    assert list(cutouts) == ["astronaut", "cat", "cup"]
    assert {label: [c.path.name for c in pool] for label, pool in cutouts.items()} == {
        "astronaut": ["astronaut.jpg"], "cat": ["chelsea.png"], "cup": ["coffee.png"]}   # masks are no cutouts
    cup = cutouts["cup"][0]
    side = 2 * CUP_RADIUS + 1
    assert cup.rgb.shape == (side, side, 3) and cup.alpha.shape == (side, side)
    assert cup.rgb.dtype == cup.alpha.dtype == np.float32
    crop = np.s_[200 - CUP_RADIUS:200 + CUP_RADIUS + 1, 300 - CUP_RADIUS:300 + CUP_RADIUS + 1]
    assert np.array_equal(cup.rgb, data.coffee()[crop].astype(np.float32) / 255)
    assert np.array_equal(cup.alpha, disc((400, 600), 200, 300, CUP_RADIUS)[crop].astype(np.float32))
    assert cup.mask_path.name == "coffee_mask.png" and cup.name == "cup/coffee.png"

    cat = cutouts["cat"][0]
    assert cat.mask_path is None
    assert set(np.unique(cat.alpha)) - {0.0, 1.0}, "the soft alpha edge is kept"
    for axis in (0, 1):     # cropped: every border row and column holds some alpha
        assert cat.alpha.max(axis=axis)[[0, -1]].min() > 0


def test_digest_is_of_the_bytes_not_the_place(material, tmp_path):
    import shutil

    a = load_cutouts(material[0])
    b = load_cutouts(shutil.copytree(material[0], tmp_path / "elsewhere" / "renamed_root"))
    assert [c.sha256 for pool in a.values() for c in pool] == [c.sha256 for pool in b.values() for c in pool]


def test_grayscale_16bit_and_palette_cutouts_are_converted(tmp_path):
    root = tmp_path / "cut"
    cam = data.camera()                                      # grayscale 512 x 512
    save(root / "gray" / "cam.png", cam)
    save(root / "gray" / "cam_mask.png", (disc(cam.shape, 256, 256, 40) * 255).astype(np.uint8))
    save(root / "deep" / "moon.png", data.moon().astype(np.uint16) * 257)
    save(root / "deep" / "moon_mask.png", (disc(data.moon().shape, 100, 100, 30) * 65535).astype(np.uint16))
    palette = Image.fromarray(data.coffee()).quantize(16)
    palette.info["transparency"] = 0                          # palette entry 0 transparent
    save(root / "pal" / "cup.png", palette, transparency=0)
    cutouts = load_cutouts(root)
    g = cutouts["gray"][0]
    assert g.rgb.shape == (81, 81, 3) and np.array_equal(g.rgb[..., 0], g.rgb[..., 2])
    assert np.array_equal(g.rgb[..., 0], cam[216:297, 216:297].astype(np.float32) / 255)
    m = cutouts["deep"][0]
    assert m.alpha.shape == (61, 61)
    assert np.allclose(m.rgb[..., 0], data.moon()[70:131, 70:131] / 255, atol=1e-6)
    p = cutouts["pal"][0]
    index = np.asarray(palette)
    assert set(np.unique(p.alpha)) == {0.0, 1.0} and (index == 0).any()


def _refused(root, match_path, fragment, **kw):
    with pytest.raises(FewShotError) as caught:
        load_cutouts(root, **kw)
    message = str(caught.value)
    assert str(match_path) in message, message
    assert fragment in message, message
    assert "\n" not in message
    return caught.value


def test_refusals_name_the_file(cutout_copy):
    root = cutout_copy
    plain = save(root / "cup" / "plain.png", data.coffee())
    _refused(root, plain, "no transparency and no mask file plain_mask.png")
    plain.unlink()

    opaque = save(root / "cup" / "opaque.png", np.dstack([data.coffee(), np.full((400, 600), 255, np.uint8)]))
    _refused(root, opaque, "every pixel is opaque")
    opaque.unlink()

    save(root / "cup" / "small.png", data.coffee())
    small_mask = save(root / "cup" / "small_mask.png", np.zeros((40, 60), np.uint8) + 255)
    _refused(root, small_mask, "mask is 60 x 40 but its image small.png is 600 x 400")
    save(root / "cup" / "small_mask.png", np.zeros((400, 600), np.uint8))
    _refused(root, small_mask, "mask is empty")
    (root / "cup" / "small.png").unlink()
    small_mask.unlink()

    clear = save(root / "cat" / "clear.png", np.full((30, 30, 4), (9, 9, 9, 0), np.uint8))
    _refused(root, clear, "mask is empty")
    clear.unlink()

    faint = save(root / "cat" / "faint.png", np.full((30, 30, 4), (9, 9, 9, 100), np.uint8))
    _refused(root, faint, "no pixel is more than half opaque")
    faint.unlink()

    orphan = save(root / "cup" / "lid_mask.png", np.zeros((10, 10), np.uint8))
    _refused(root, orphan, "mask file has no image beside it")
    orphan.unlink()

    twin = save(root / "cup" / "coffee.jpg", data.coffee())
    _refused(root, root / "cup" / "coffee_mask.png", "would belong to 2 images")
    twin.unlink()

    only_masks = root / "lids"
    save(only_masks / "lid.png", data.coffee())
    save(only_masks / "lid_mask.png", (disc((400, 600), 100, 100, 20) * 255).astype(np.uint8))
    (only_masks / "lid.png").rename(only_masks / "lid.txt")
    _refused(root, only_masks, "class folder holds no cutout")
    for p in only_masks.iterdir():
        p.unlink()
    only_masks.rmdir()

    damaged = root / "cat" / "broken.png"
    damaged.write_bytes((root / "cat" / "chelsea.png").read_bytes()[:2000])
    _refused(root, damaged, "cannot be decoded")
    damaged.write_bytes(b"not an image at all")
    _refused(root, damaged, "is not an image file")
    damaged.unlink()

    link = root / "cat" / "link.png"
    os.symlink(root / "cat" / "chelsea.png", link)
    _refused(root, link, "is a symlink")
    link.unlink()

    assert load_cutouts(root)     # all repaired


def test_budgets_name_the_file_and_the_limit(material):
    root = material[0]
    _refused(root, root, "more than max_files=3", max_files=3)
    _refused(root, root / "astronaut" / "astronaut.jpg", "at most max_pixels=1000", max_pixels=1000)
    first = load_cutouts(root)["astronaut"][0].alpha.size * 16     # rgb + alpha, float32
    error = _refused(root, root / "cat" / "chelsea.png", f"at most max_bytes={first:,}", max_bytes=first)
    assert isinstance(error, SynthesisError)
    with pytest.raises(SynthesisError, match="max_pixels must be an integer"):
        load_cutouts(root, max_pixels=0)
