"""A chosen part of the user's real images as one value (nodes/fewshot/realset.py): ``select`` and
``make_set`` (parts train / held_out / all, captions from ``.txt`` or the pack, refusals before any
pixel is decoded), the batch budget, ``load_batch`` (shape, range, interrupt), ``file_digest`` (the
image's identity, the size limit), ``real_item`` (an accepted ``source: real`` dataset item) and the
node's ``summary``. Real photos from ``skimage.data`` written as JPEG/PNG to temp folders."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from dtgen.nodes.fewshot import realset as realset_mod
from dtgen.nodes.fewshot.imageset import FewShotError, scan
from dtgen.nodes.fewshot.pixels import load_image
from dtgen.nodes.fewshot.realset import (PARTS, RealSet, check_budget, file_digest, make_set, real_item, select,
                                        summary)
from dtgen.nodes.prompting.captions import caption_function
from dtgen.nodes.prompting.pack import PromptPackError, load_pack
from support.pkg import ROOT

SIZE = 64


def _save(path: Path, array: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


@pytest.fixture
def root(tmp_path) -> Path:
    """plate_clean: 4 images (one captioned), bowl_clean: 2 images."""
    root = tmp_path / "real"
    _save(root / "plate_clean" / "a_coffee.jpg", data.coffee(), quality=90)
    _save(root / "plate_clean" / "b_chelsea.png", data.chelsea())
    _save(root / "plate_clean" / "c_astronaut.jpg", data.astronaut(), quality=90)
    _save(root / "plate_clean" / "d_rocket.png", data.rocket())
    (root / "plate_clean" / "b_chelsea.txt").write_text("dtgtableware, a cat posing as a plate\n", encoding="utf-8")
    _save(root / "bowl_clean" / "e_coffee_flip.png", data.coffee()[:, ::-1].copy())
    _save(root / "bowl_clean" / "f_camera.png", data.camera())
    return root


@pytest.fixture
def images(root):
    return scan(root)


@pytest.fixture(scope="module")
def tableware():
    return load_pack(str(ROOT / "prompts" / "tableware.yaml"))


def plain(label: str) -> str:
    return f"fallback {label}"


# --- select ----------------------------------------------------------------------------------------

def test_parts_train_and_held_out_partition_the_set(images):
    train = select(images, "train", 0.5, seed=3)
    held = select(images, "held_out", 0.5, seed=3)
    assert len(held) == 3 and len(train) == 3              # round(4 * .5) = 2 plates, round(2 * .5) = 1 bowl
    assert sorted(map(str, (im.path for im in train + held))) == sorted(str(im.path) for im in images)
    assert not set(train) & set(held)
    assert {im.label for im in train} == {"plate_clean", "bowl_clean"}   # every class keeps one to train on
    assert select(images, "all", 0.5, seed=3) == images                 # all ignores the split
    assert select(images, "train", 0.5, seed=3) == train                # deterministic


def test_part_all_and_train_without_holdout_are_the_whole_set(images):
    assert select(images, "all", 0.0, seed=0) == images
    assert select(images, "train", 0.0, seed=0) == images


def test_empty_held_out_part_is_refused_naming_holdout(images):
    with pytest.raises(FewShotError) as info:
        select(images, "held_out", 0.0, seed=0)
    assert "held_out part is empty" in str(info.value) and "holdout=0.0" in str(info.value)
    assert info.value.path is None
    one_each = [im for im in images if im.path.name in ("a_coffee.jpg", "f_camera.png")]
    with pytest.raises(FewShotError, match="raise holdout"):
        select(one_each, "held_out", 0.9, seed=0)          # a single image per class is never held out


@pytest.mark.parametrize("part", ["test", "", "Train", None])
def test_unknown_part_is_refused(images, part):
    with pytest.raises(FewShotError) as info:
        select(images, part, 0.2, seed=0)
    assert "part must be one of train, held_out, all" in str(info.value) and repr(part) in str(info.value)
    assert PARTS == ("train", "held_out", "all")


def test_bad_holdout_is_refused_by_the_split(images):
    with pytest.raises(FewShotError, match="holdout must be a fraction"):
        select(images, "all", 1.0, seed=0)                 # checked even for part all


# --- make_set ---------------------------------------------------------------------------------------

def test_make_set_keeps_choice_settings_and_order(root, images, tableware):
    rs = make_set(str(root), images, caption_function(tableware), size=SIZE, fit="pad", part="train",
                  holdout=0.5, seed=3)
    assert isinstance(rs, RealSet) and rs.root == root and isinstance(rs.root, Path)
    assert rs.images == tuple(select(images, "train", 0.5, 3))
    assert (rs.size, rs.fit, rs.part, rs.holdout, rs.seed) == (SIZE, "pad", "train", 0.5, 3)
    assert isinstance(rs.holdout, float)
    assert rs.labels == [im.label for im in rs.images]
    assert len(rs.captions) == len(rs.images)
    with pytest.raises(AttributeError):
        rs.size = 128                                      # frozen


def test_captions_from_txt_win_over_the_pack_fallback(root, images, tableware):
    rs = make_set(root, images, caption_function(tableware), size=SIZE, part="all")
    captions = {im.path.name: c for im, c in zip(rs.images, rs.captions)}
    assert captions == {
        "a_coffee.jpg": "dtgtableware, a photo of a clean plate",
        "b_chelsea.png": "dtgtableware, a cat posing as a plate",       # its .txt
        "c_astronaut.jpg": "dtgtableware, a photo of a clean plate",
        "d_rocket.png": "dtgtableware, a photo of a clean plate",
        "e_coffee_flip.png": "dtgtableware, a photo of a clean bowl",
        "f_camera.png": "dtgtableware, a photo of a clean bowl",
    }


def test_counts_are_per_label_sorted(root, images):
    rs = make_set(root, images, plain, size=SIZE, part="all")
    assert rs.counts() == {"bowl_clean": 2, "plate_clean": 4}
    assert list(rs.counts()) == ["bowl_clean", "plate_clean"]
    held = make_set(root, images, plain, size=SIZE, part="held_out", holdout=0.5, seed=3)
    assert held.counts() == {"bowl_clean": 1, "plate_clean": 2}


def test_bad_fit_is_refused(root, images):
    with pytest.raises(FewShotError) as info:
        make_set(root, images, plain, size=SIZE, fit="stretch")
    assert "fit must be one of crop, pad" in str(info.value) and "'stretch'" in str(info.value)


def test_bad_part_is_refused_by_make_set(root, images):
    with pytest.raises(FewShotError, match="part must be one of"):
        make_set(root, images, plain, size=SIZE, part="validation")


def test_a_label_missing_from_the_pack_fails_before_any_pixel_is_decoded(tmp_path, tableware, monkeypatch):
    root = tmp_path / "real"
    _save(root / "plate_clean" / "a.png", data.coffee())
    _save(root / "teapot" / "b.png", data.chelsea())
    decoded = []
    monkeypatch.setattr(realset_mod, "load_image", lambda *a, **k: decoded.append(a) or np.zeros((SIZE, SIZE, 3)))
    with pytest.raises(PromptPackError) as info:
        make_set(root, scan(root), caption_function(tableware), size=SIZE, part="all")
    assert "'teapot'" in str(info.value) and "'tableware'" in str(info.value)
    assert decoded == []


def test_a_captioned_image_needs_no_fallback(tmp_path, tableware):
    root = tmp_path / "real"
    _save(root / "teapot" / "b.png", data.chelsea())
    (root / "teapot" / "b.txt").write_text("my own caption", encoding="utf-8")
    rs = make_set(root, scan(root), caption_function(tableware), size=SIZE, part="all")
    assert rs.captions == ("my own caption",)


# --- budgets ----------------------------------------------------------------------------------------

def test_check_budget_accepts_up_to_the_limit_and_names_count_and_size(monkeypatch):
    monkeypatch.setattr(realset_mod, "MAX_BATCH_BYTES", 10 * 64 * 64 * 3 * 4)     # exactly 10 images of 64 px
    check_budget(10, 64)                                   # at the limit: fine
    check_budget(0, 4096)
    with pytest.raises(FewShotError) as info:
        check_budget(11, 64)
    message = str(info.value)
    assert "11 images at 64 x 64" in message and "GiB" in message and "lower size" in message


def test_make_set_refuses_a_batch_over_budget_before_decoding(root, images, monkeypatch):
    monkeypatch.setattr(realset_mod, "MAX_BATCH_BYTES", 5 * SIZE * SIZE * 3 * 4)
    calls = []
    monkeypatch.setattr(realset_mod, "load_image", lambda *a, **k: calls.append(a))
    with pytest.raises(FewShotError) as info:
        make_set(root, images, plain, size=SIZE, part="all")
    assert f"6 images at {SIZE} x {SIZE}" in str(info.value)
    assert calls == []
    rs = make_set(root, images, plain, size=SIZE, part="train", holdout=0.5, seed=3)   # 3 images fit
    assert len(rs.images) == 3


def test_default_budget_is_8_gib():
    assert realset_mod.MAX_BATCH_BYTES == 8 * 1024 ** 3
    check_budget(680, 1024)                                # the documented ~680 images at 1024 px
    with pytest.raises(FewShotError, match="700 images at 1024 x 1024 need 8.2 GiB"):
        check_budget(700, 1024)


# --- load_batch --------------------------------------------------------------------------------------

def test_load_batch_is_float32_in_range_and_matches_load_image(root, images):
    rs = make_set(root, images, plain, size=SIZE, fit="crop", part="all")
    batch = realset_mod.load_batch(rs)
    assert batch.shape == (6, SIZE, SIZE, 3) and batch.dtype == np.float32
    assert batch.min() >= 0.0 and batch.max() <= 1.0 and batch.std() > 0.05
    for i, im in enumerate(rs.images):
        assert np.array_equal(batch[i], load_image(im.path, SIZE, "crop"))
    assert not np.array_equal(batch[0], batch[1])          # different photos, different rows
    padded = realset_mod.load_batch(make_set(root, images, plain, size=SIZE, fit="pad", part="all"))
    assert np.all(padded[0, :4] == 0)                      # coffee 600 x 400 padded with black rows


def test_load_batch_calls_check_interrupt_once_per_image(root, images):
    rs = make_set(root, images, plain, size=SIZE, part="train", holdout=0.5, seed=3)
    calls = []
    realset_mod.load_batch(rs, lambda: calls.append(1))
    assert len(calls) == len(rs.images) == 3


def test_an_interrupt_stops_loading(root, images, monkeypatch):
    rs = make_set(root, images, plain, size=SIZE, part="all")
    decoded = []
    real = realset_mod.load_image
    monkeypatch.setattr(realset_mod, "load_image", lambda *a, **k: decoded.append(a[0]) or real(*a, **k))
    ticks = []

    def interrupt():
        ticks.append(1)
        if len(ticks) == 3:
            raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        realset_mod.load_batch(rs, interrupt)
    assert decoded == [rs.images[0].path, rs.images[1].path]   # nothing after the interrupt


def test_load_batch_names_a_damaged_file(root, images):
    rs = make_set(root, images, plain, size=SIZE, part="all")
    bad = rs.images[2].path
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(FewShotError) as info:
        realset_mod.load_batch(rs)
    assert str(bad) in str(info.value)


# --- file_digest ------------------------------------------------------------------------------------

def test_file_digest_is_the_sha256_of_the_bytes(root, images):
    for im in images:
        assert file_digest(im.path) == hashlib.sha256(im.path.read_bytes()).hexdigest()
    assert file_digest(str(images[0].path)) == file_digest(images[0].path)
    digests = {file_digest(im.path) for im in images}
    assert len(digests) == len(images)


def test_file_digest_ignores_the_name_and_folder(root, tmp_path):
    src = root / "plate_clean" / "a_coffee.jpg"
    copy = tmp_path / "elsewhere" / "renamed.jpg"
    copy.parent.mkdir()
    copy.write_bytes(src.read_bytes())
    assert file_digest(copy) == file_digest(src)
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 20_000)            # over the 1 MiB read block
    assert file_digest(big) == hashlib.sha256(big.read_bytes()).hexdigest()


def test_file_digest_refuses_a_file_over_the_limit(root, monkeypatch):
    path = root / "plate_clean" / "b_chelsea.png"
    size = path.stat().st_size
    monkeypatch.setattr(realset_mod, "MAX_FILE_BYTES", size - 1)
    with pytest.raises(FewShotError) as info:
        file_digest(path)
    assert str(path) in str(info.value) and "are not read" in str(info.value)
    assert info.value.path == path
    monkeypatch.setattr(realset_mod, "MAX_FILE_BYTES", size)    # exactly at the limit: read
    assert file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_digest_names_a_missing_file(tmp_path):
    gone = tmp_path / "gone.png"
    with pytest.raises(FewShotError) as info:
        file_digest(gone)
    assert str(gone) in str(info.value) and "cannot be read" in str(info.value)


# --- real_item --------------------------------------------------------------------------------------

def test_real_item_is_an_accepted_source_real_item(root, images, tableware):
    rs = make_set(root, images, caption_function(tableware), size=SIZE, part="all")
    i = [im.path.name for im in rs.images].index("b_chelsea.png")
    digest = file_digest(rs.images[i].path)
    item = real_item(rs, i, digest)
    assert item.label == "plate_clean" and item.prompt == "dtgtableware, a cat posing as a plate"
    assert item.accepted is True and item.reason == "real" and item.score is None
    assert item.metadata == {
        "source": "real", "item_id": "real:" + digest[:32], "real_file": "plate_clean/b_chelsea.png",
        "sha256": digest, "caption": "dtgtableware, a cat posing as a plate", "counts_toward_quota": False,
    }
    assert re.fullmatch(r"real:[0-9a-f]{32}", item.metadata["item_id"])
    assert item.image.shape == (SIZE, SIZE, 3) and item.image.dtype == np.float32
    assert np.array_equal(item.image, load_image(rs.images[i].path, SIZE, rs.fit))


def test_real_item_quota_flag_and_load_false(root, images, monkeypatch):
    rs = make_set(root, images, plain, size=SIZE, part="all")
    digest = file_digest(rs.images[0].path)
    assert real_item(rs, 0, digest, counts_toward_quota=1).metadata["counts_toward_quota"] is True
    monkeypatch.setattr(realset_mod, "load_image", lambda *a, **k: pytest.fail("load=False decoded pixels"))
    item = real_item(rs, 0, digest, load=False)
    assert item.image is None
    assert item.metadata["item_id"] == "real:" + digest[:32] and item.prompt == "fallback bowl_clean"


# --- summary ----------------------------------------------------------------------------------------

def test_summary_of_a_split_part(root, images):
    rs = make_set(root, images, plain, size=SIZE, fit="pad", part="held_out", holdout=0.5, seed=3)
    text = summary(rs, from_txt=1, fallback="'a photo of <label>'")
    lines = text.splitlines()
    assert lines[0] == (f"3 real images in 2 classes from {root} (part held_out of a 0.5 holdout split "
                        f"(seed 3)), {SIZE} x {SIZE} (pad)")
    assert lines[1] == "captions: 1 from .txt files, 2 from 'a photo of <label>'"
    assert lines[2:] == ["bowl_clean: 1", "plate_clean: 2"]


def test_summary_of_every_image(root, images):
    rs = make_set(root, images, plain, size=SIZE, part="all")
    text = summary(rs, from_txt=1)
    assert "6 real images in 2 classes" in text and "(every image)" in text and "holdout" not in text
    assert "captions: 1 from .txt files, 5 from the prompt pack" in text
    assert text.splitlines()[-2:] == ["bowl_clean: 2", "plate_clean: 4"]
