"""Backgrounds (nodes/synthesis/backgrounds): a flat folder of mixed sizes and modes, fitted to
the output square; arrays given directly; the refusals naming the folder or file."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image
from skimage import data
from synthesis_material import save

from dtgen.nodes.fewshot.pixels import load_image
from dtgen.nodes.synthesis.backgrounds import fit_array, load_backgrounds
from dtgen.nodes.synthesis.errors import SynthesisError


def test_a_folder_of_mixed_sizes_and_modes_is_fitted(material):
    bgs = load_backgrounds(material[1])
    assert [b.name for b in bgs.entries] == ["camera.png", "moon16.png", "rocket.jpg"]   # notes.txt ignored
    for j in range(len(bgs)):
        out = bgs.fitted(j, 128)
        assert out.shape == (128, 128, 3) and out.dtype == np.float32
        assert 0 <= out.min() and out.max() <= 1 and not out.flags.writeable
    camera = bgs.fitted(0, 128)
    assert np.array_equal(camera[..., 0], camera[..., 2])                      # grayscale -> RGB
    assert np.array_equal(bgs.fitted(2, 96), load_image(material[1] / "rocket.jpg", 96, "crop"))
    assert bgs.fitted(2, 96) is bgs.fitted(2, 96)                              # cached


def test_identity_is_the_content_not_the_path(material, tmp_path):
    a = load_backgrounds(material[1])
    b = load_backgrounds(shutil.copytree(material[1], tmp_path / "moved"))
    assert [x.sha256 for x in a.entries] == [x.sha256 for x in b.entries]


def test_the_cache_is_bounded(material):
    bgs = load_backgrounds(material[1], cache_bytes=64 * 64 * 3 * 4)
    first = bgs.fitted(0, 64)
    bgs.fitted(1, 64)
    assert bgs.fitted(0, 64) is not first and np.array_equal(bgs.fitted(0, 64), first)


def test_arrays_are_backgrounds_too():
    coffee = data.coffee()
    bgs = load_backgrounds([coffee, data.camera(), coffee.astype(np.float32) / 255, data.moon()[..., None]])
    assert [b.name for b in bgs.entries] == ["array[0]", "array[1]", "array[2]", "array[3]"]
    assert bgs.entries[0].sha256 != bgs.entries[2].sha256
    assert np.allclose(bgs.fitted(0, 64), bgs.fitted(2, 64))
    side = 400
    square = coffee[:, 100:100 + side].astype(np.float32) / 255
    assert np.array_equal(fit_array(coffee.astype(np.float32) / 255, side), square)    # centre crop, no resize
    for bad, fragment in ((np.zeros((5, 5, 4)), "shape"), (np.full((5, 5), 2.0), r"in \[0, 1\]"),
                          (np.zeros((5, 5), np.int32), "dtype int32"), ([], "no array")):
        with pytest.raises(SynthesisError, match=fragment):
            load_backgrounds([bad] if not isinstance(bad, list) else bad)


def test_refusals_name_the_folder_or_file(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no image here")
    with pytest.raises(SynthesisError, match=f"^{empty}: folder holds no background image"):
        load_backgrounds(empty)
    with pytest.raises(SynthesisError, match="does not exist"):
        load_backgrounds(tmp_path / "missing")
    folder = tmp_path / "bg"
    save(folder / "a.png", data.camera())
    save(folder / "sub" / "b.png", data.camera())
    with pytest.raises(SynthesisError, match=f"^{folder / 'sub'}: is a folder"):
        load_backgrounds(folder)
    shutil.rmtree(folder / "sub")
    os.symlink(folder / "a.png", folder / "c.png")
    with pytest.raises(SynthesisError, match=f"^{folder / 'c.png'}: is a symlink"):
        load_backgrounds(folder)
    (folder / "c.png").unlink()
    (folder / "d.png").write_bytes(b"garbage")
    with pytest.raises(SynthesisError, match=f"^{folder / 'd.png'}: is not an image"):
        load_backgrounds(folder)
    (folder / "d.png").unlink()
    save(folder / "e.png", data.camera())
    with pytest.raises(SynthesisError, match=f"^{folder}: holds more than max_files=1"):
        load_backgrounds(folder, max_files=1)
    truncated = folder / "f.png"
    truncated.write_bytes((folder / "e.png").read_bytes()[:3000])
    bgs = load_backgrounds(folder)                      # the header is fine: refused when decoded
    with pytest.raises(Exception, match=f"^{truncated}: image cannot be decoded"):
        bgs.fitted(2, 64)
    assert Image.open(folder / "a.png").size == (512, 512)
