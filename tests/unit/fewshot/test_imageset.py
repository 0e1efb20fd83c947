"""The user's few real images (nodes/fewshot): scanning an ImageFolder, decoding every common
format to float RGB, the seeded split, captions, and each refusal naming the file. Real photos
from ``skimage.data``, written in many formats and modes to temp folders."""
from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from dtgen.nodes.fewshot.imageset import (MAX_CAPTION_CHARS, FewShotError, RealImage, caption_of, scan,
                                         split)
from dtgen.nodes.fewshot.pixels import MAX_PIXELS, load_image

SIZE = 96


def _save(path: Path, image: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kw)
    return path


def _rgb(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)())


def _reference(src: Image.Image, size: int = SIZE) -> np.ndarray:
    """What ``crop`` should give: the centred square of the RGB source, resized."""
    w, h = src.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return np.asarray(src.convert("RGB").crop(box).resize((size, size), Image.Resampling.LANCZOS),
                      dtype=np.float32) / 255


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "real"
    _save(root / "cat" / "chelsea.jpg", _rgb("chelsea"), quality=92)
    _save(root / "cat" / "chelsea_b.png", _rgb("chelsea").transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    (root / "cat" / "chelsea_b.txt").write_text("  a tabby cat on a rug, flipped\n", encoding="utf-8")
    (root / "cat" / "empty.txt").write_text("", encoding="utf-8")
    _save(root / "cat" / "empty.bmp", _rgb("chelsea").resize((90, 60)))
    _save(root / "coffee" / "cup.WEBP", _rgb("coffee"), quality=90)
    _save(root / "coffee" / "above.JPEG", _rgb("coffee").rotate(180))
    _save(root / "coffee" / ".hidden.png", _rgb("coffee"))     # hidden: ignored
    (root / "coffee" / "notes.md").write_text("not an image")   # other files: ignored
    (root / "coffee" / "orphan.txt").write_text("caption without image")
    _save(root / ".thumbnails" / "x.png", _rgb("coffee"))      # hidden folder: ignored
    (root / "README.txt").write_text("loose files in the root are ignored")
    return root


# --- scan ------------------------------------------------------------------------------------------

def test_scan_reads_labels_files_and_captions_in_sorted_order(tree):
    images = scan(tree)
    assert [(im.label, im.path.name) for im in images] == [
        ("cat", "chelsea.jpg"), ("cat", "chelsea_b.png"), ("cat", "empty.bmp"),
        ("coffee", "above.JPEG"), ("coffee", "cup.WEBP")]
    captions = {im.path.name: im.caption for im in images}
    assert captions == {"chelsea.jpg": None, "chelsea_b.png": "a tabby cat on a rug, flipped",
                        "empty.bmp": None, "above.JPEG": None, "cup.WEBP": None}
    assert all(im.path == tree / im.label / im.path.name for im in images)
    assert scan(str(tree)) == images                       # str or Path, same result
    with pytest.raises(AttributeError):
        images[0].label = "dog"                            # frozen


def test_caption_file_wins_over_the_fallback(tree):
    images = {im.path.name: im for im in scan(tree)}
    fallback = lambda label: f"photo of sks {label}"       # noqa: E731  (the adapter passes trigger + clip_text)
    assert caption_of(images["chelsea_b.png"], fallback) == "a tabby cat on a rug, flipped"
    assert caption_of(images["chelsea.jpg"], fallback) == "photo of sks cat"
    assert caption_of(images["empty.bmp"], fallback) == "photo of sks cat"   # an empty .txt is no caption


def test_a_caption_of_exactly_the_limit_is_kept(tree):
    (tree / "cat" / "chelsea.txt").write_text("x" * MAX_CAPTION_CHARS + "\n\n", encoding="utf-8")
    assert scan(tree)[0].caption == "x" * MAX_CAPTION_CHARS


# --- load_image: formats and modes ------------------------------------------------------------------

def _jpeg(p):
    return _save(p / "a.jpg", _rgb("astronaut"), quality=95), _rgb("astronaut"), 0.03


def _png_rgba(p):
    src = np.dstack([data.astronaut(), np.full((512, 512), 255, np.uint8)])
    return _save(p / "a.png", Image.fromarray(src, "RGBA")), _rgb("astronaut"), 0.002


def _gray(p):
    return _save(p / "a.png", Image.fromarray(data.camera(), "L")), Image.fromarray(data.camera()), 0.002


def _gray_alpha(p):
    src = Image.fromarray(data.camera(), "L")
    la = Image.merge("LA", (src, Image.new("L", src.size, 255)))
    return _save(p / "a.png", la), src, 0.002


def _palette(p):
    pal = _rgb("coffee").quantize(64)
    return _save(p / "a.png", pal), pal.convert("RGB"), 0.002


def _webp(p):
    return _save(p / "a.webp", _rgb("rocket"), quality=95), _rgb("rocket"), 0.03


def _bmp(p):
    return _save(p / "a.bmp", _rgb("coffee")), _rgb("coffee"), 0.002


def _cmyk(p):
    return _save(p / "a.jpg", _rgb("chelsea").convert("CMYK"), quality=95), _rgb("chelsea"), 0.04


@pytest.mark.parametrize("make", [_jpeg, _png_rgba, _gray, _gray_alpha, _palette, _webp, _bmp, _cmyk],
                         ids=lambda f: f.__name__.strip("_"))
def test_every_format_decodes_to_float_rgb_matching_the_photo(tmp_path, make):
    path, source, tolerance = make(tmp_path)
    out = load_image(path, SIZE)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.float32 and out.flags.c_contiguous
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert np.abs(out - _reference(source)).mean() < tolerance
    if source.mode == "L":
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.dstack([data.astronaut(), np.full((512, 512), 255, np.uint8)])
    rgba[:, :256, 3] = 0                                   # left half fully transparent
    out = load_image(_save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA")), 64)
    assert np.allclose(out[:, :28], 1.0)                   # white, not the hidden astronaut pixels
    assert np.abs(out[:, 36:] - _reference(_rgb("astronaut"), 64)[:, 36:]).mean() < 0.002
    pal = _rgb("coffee").quantize(15)                      # indices 0..14; 15: black, made transparent
    index = np.asarray(pal).copy()
    index[:, :300] = 15                                    # the left half of 600 x 400 -> left half of the crop
    marked = Image.fromarray(index, "P")
    marked.putpalette(pal.getpalette()[:45] + [0, 0, 0])
    out = load_image(_save(tmp_path / "p.png", marked, transparency=15), 64)
    assert np.allclose(out[:, :28], 1.0)                   # white, not black
    assert out[:, 36:].std() > 0.05


def test_sixteen_bit_png_scales_by_65535(tmp_path):
    camera16 = data.camera().astype(np.uint16) * 257       # 0..255 -> 0..65535
    camera16[:64, :64] = 65535
    camera16[-64:, -64:] = 32768
    path = _save(tmp_path / "deep.png", Image.fromarray(camera16))
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")                    # really stored as 16-bit
    out = load_image(path, 64)                             # 512 -> 64: 8 x 8 source pixels per output pixel
    assert out.max() == pytest.approx(1.0, abs=1e-3) and out[0, 0, 0] == pytest.approx(1.0, abs=1e-3)
    assert out[-1, -1, 0] == pytest.approx(0.5, abs=1e-3)  # mid-grey, not saturated white
    eight_bit = load_image(_save(tmp_path / "flat.png", Image.fromarray(data.camera(), "L")), 64)
    assert np.abs(out[8:-8, 8:-8] - eight_bit[8:-8, 8:-8]).max() < 0.01


def _marked_chelsea() -> Image.Image:
    """Chelsea (300 x 451) with a pure red band on the far left, pure blue on the far right."""
    src = data.chelsea().copy()
    src[:, :60] = (255, 0, 0)
    src[:, -60:] = (0, 0, 255)
    return Image.fromarray(src)


def test_crop_keeps_the_centre_of_a_wide_image(tmp_path):
    src = _marked_chelsea()
    out = load_image(_save(tmp_path / "wide.png", src), SIZE, "crop")
    assert np.abs(out - _reference(src)).mean() < 0.012   # the centred 300 x 300 square (75.5 px cut per side)
    left = np.asarray(src.crop((0, 0, 300, 300)).resize((SIZE, SIZE)), np.float32) / 255
    assert np.abs(out - left).mean() > 0.1                # not the left square
    red = (out[..., 0] > 0.95) & (out[..., 1] < 0.05) & (out[..., 2] < 0.05)
    blue = (out[..., 2] > 0.95) & (out[..., 0] < 0.05) & (out[..., 1] < 0.05)
    assert not red.any() and not blue.any()               # the bands lie outside the square (75 px cut per side)


def test_pad_keeps_everything_and_pads_with_black(tmp_path):
    out = load_image(_save(tmp_path / "wide.png", _marked_chelsea()), SIZE, "pad")
    band = round(SIZE * (1 - 300 / 451) / 2)               # ~16 rows of padding above and below
    assert np.all(out[: band - 1] == 0) and np.all(out[-(band - 1):] == 0)
    mid = out[band + 1: SIZE - band - 1]
    assert np.allclose(mid[:, 2], (1, 0, 0), atol=0.02)     # red band at the left edge survives
    assert np.allclose(mid[:, -3], (0, 0, 1), atol=0.02)    # blue on the right
    assert mid[:, 20:-20].std() > 0.05                     # and the photo in between


def test_exif_orientation_is_applied(tmp_path):
    src = _marked_chelsea()                                # 451 wide, 300 high
    exif = Image.Exif()
    exif[0x0112] = 6                                       # "rotate 90 CW to display": shown 300 wide, 451 high
    path = _save(tmp_path / "rotated.jpg", src, quality=95, exif=exif)
    out = load_image(path, SIZE, "pad")
    band = round(SIZE * (1 - 300 / 451) / 2)
    assert np.all(out[:, : band - 1] < 0.02) and np.all(out[:, -(band - 1):] < 0.02)   # bands left/right now
    assert out[band + 1: -band - 1].std() > 0.05
    upright = np.asarray(src.transpose(Image.Transpose.ROTATE_270).resize((64, 96)), np.float32) / 255
    got = np.asarray(Image.fromarray((out[:, band:SIZE - band] * 255).astype(np.uint8)).resize((64, 96)),
                     np.float32) / 255
    assert np.abs(got - upright).mean() < 0.05            # the red band is now on top, as displayed
    assert np.allclose(out[1:8, SIZE // 2], (1, 0, 0), atol=0.08)   # red (the left band) on top
    assert np.allclose(out[-8:-1, SIZE // 2], (0, 0, 1), atol=0.08)  # blue at the bottom


def test_sizes_and_upscaling(tmp_path):
    path = _save(tmp_path / "small.png", _rgb("coffee").resize((30, 20)))
    for size in (64, 333, 4096):
        assert load_image(path, size, "crop").shape == (size, size, 3)
    assert load_image(path, 64, "pad").shape == (64, 64, 3)


# --- split -----------------------------------------------------------------------------------------

def _items(counts: dict[str, int], root: str = "/data/real") -> list[RealImage]:
    return [RealImage(Path(root) / label / f"{label}_{i:03}.png", label)
            for label, n in counts.items() for i in range(n)]


def test_split_is_stratified_deterministic_and_keeps_one_per_label():
    images = _items({"a": 10, "b": 5, "c": 1, "d": 2})
    train, held = split(images, 0.2, seed=7)
    count = lambda xs, lab: sum(im.label == lab for im in xs)   # noqa: E731
    assert [count(held, lab) for lab in "abcd"] == [2, 1, 0, 0]   # round(n * 0.2); c and d keep all
    assert sorted(map(id, train + held)) == sorted(map(id, images))
    assert [im for im in images if im in train] == train          # input order kept
    assert split(images, 0.2, seed=7) == (train, held)
    assert split(list(reversed(images)), 0.2, seed=7)[1] == list(reversed(held))   # order-independent choice
    moved = _items({"a": 10, "b": 5, "c": 1, "d": 2}, root="/elsewhere")
    assert [im.path.name for im in split(moved, 0.2, seed=7)[1]] == [im.path.name for im in held]
    chosen = {tuple(im.path.name for im in split(images, 0.2, seed=s)[1]) for s in range(20)}
    assert len(chosen) > 5                                         # the seed matters
    train, held = split(images, 0.9, seed=1)
    assert {im.label for im in train} == set("abcd") and [count(train, lab) for lab in "abcd"] == [1, 1, 1, 1]


def test_split_without_holdout_and_bad_holdouts():
    images = _items({"a": 3, "b": 2})
    assert split(images, 0, seed=0) == (images, [])
    assert split(images, 0.0, seed=123) == (images, [])
    for bad in (1, 1.0, -0.1, math.nan, "0.2", True):
        with pytest.raises(FewShotError, match="holdout must be a fraction"):
            split(images, bad, seed=0)
    with pytest.raises(FewShotError, match="seed must be an integer"):
        split(images, 0.2, seed=1.5)


# --- refusals --------------------------------------------------------------------------------------

def _refused(call, named: Path | str, *fragments: str) -> FewShotError:
    with pytest.raises(FewShotError) as info:
        call()
    message = str(info.value)
    assert str(named) in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert isinstance(info.value, ValueError) and type(info.value).__module__ == "dtgen"
    return info.value


def test_scan_refuses_missing_or_non_folder_root(tmp_path):
    _refused(lambda: scan(tmp_path / "nope"), tmp_path / "nope", "does not exist")
    (tmp_path / "file.png").write_bytes(b"x")
    _refused(lambda: scan(tmp_path / "file.png"), tmp_path / "file.png", "is not a folder")


def test_scan_refuses_a_root_without_class_folders(tmp_path):
    root = tmp_path / "real"
    root.mkdir()
    _refused(lambda: scan(root), root, "no class folders", "0 image file(s)")
    _save(root / "loose.jpg", _rgb("coffee"))
    (root / ".hidden").mkdir()
    _refused(lambda: scan(root), root, "no class folders", "1 image file(s) found directly in the root")


def test_scan_refuses_a_class_folder_without_images(tree):
    (tree / "dog").mkdir()
    (tree / "dog" / "caption.txt").write_text("a dog")
    (tree / "dog" / ".secret.png").write_bytes(b"")
    _refused(lambda: scan(tree), tree / "dog", "holds no image")


@pytest.mark.parametrize("name, problem", [("a b", "contains ' '"), ("metadata.jsonl", "file name the dataset"),
                                           ("CON", "reserved device name"), ("-x", "start with a letter"),
                                           ("caf\u00e9", "contains")])
def test_scan_refuses_a_folder_name_that_is_not_a_label(tree, name, problem):
    _save(tree / name / "x.png", _rgb("coffee").resize((64, 64)))
    _refused(lambda: scan(tree), tree / name, "not a valid label", problem)


def test_scan_refuses_labels_differing_only_by_case(tree):
    _save(tree / "Cat" / "x.png", _rgb("chelsea").resize((64, 64)))
    if (tree / "cat" / "x.png").exists():
        pytest.skip("case-insensitive file system")
    _refused(lambda: scan(tree), tree / "cat", "'Cat' and 'cat' differ only by case")


def test_scan_refuses_a_folder_inside_a_class_folder(tree):
    _save(tree / "cat" / "more" / "x.png", _rgb("chelsea").resize((64, 64)))
    _refused(lambda: scan(tree), tree / "cat" / "more", "folder inside class folder 'cat'")


def test_scan_refuses_symlinks_anywhere(tree, tmp_path):
    outside = _save(tmp_path / "outside" / "secret.png", _rgb("rocket"))
    cases = [tree / "cat" / "linked.png", tree / "cat" / "chelsea.txt", tree / "dog", tree / ".hidden_link"]
    targets = [outside, tmp_path / "outside" / "x.txt", outside.parent, outside]
    (tmp_path / "outside" / "x.txt").write_text("secret")
    for link, target in zip(cases, targets):
        link.symlink_to(target)
        err = _refused(lambda: scan(tree), link, "is a symlink", "outside the allowed folder")
        assert err.path == link
        link.unlink()
    scan(tree)                                              # clean again
    linked_root = tmp_path / "root_link"
    linked_root.symlink_to(tree)
    _refused(lambda: scan(linked_root), linked_root, "is a symlink")
    link = tmp_path / "direct.png"
    link.symlink_to(outside)
    _refused(lambda: load_image(link, 64), link, "is a symlink")


def test_scan_refuses_bad_captions(tree):
    caption = tree / "cat" / "chelsea.txt"
    caption.write_text("y" * (MAX_CAPTION_CHARS + 1), encoding="utf-8")
    _refused(lambda: scan(tree), caption, f"{MAX_CAPTION_CHARS + 1} characters", f"at most {MAX_CAPTION_CHARS}")
    caption.write_text("z" * 100_000, encoding="utf-8")    # refused before reading
    _refused(lambda: scan(tree), caption, "longer than")
    caption.write_bytes("caf\u00e9".encode("latin-1"))
    _refused(lambda: scan(tree), caption, "not UTF-8")


def test_scan_refuses_more_than_max_files(tree):
    assert len(scan(tree, max_files=5)) == 5
    _refused(lambda: scan(tree, max_files=4), tree, "more than max_files=4")
    with pytest.raises(FewShotError, match="max_files"):
        scan(tree, max_files=0)


def test_load_refuses_truncated_and_non_images(tmp_path):
    good = _save(tmp_path / "full.jpg", _rgb("astronaut"), quality=90).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good[: len(good) // 2])
    _refused(lambda: load_image(cut, 64), cut, "cannot be decoded")
    png = io.BytesIO()
    _rgb("coffee").save(png, "PNG")
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(png.getvalue()[: len(png.getvalue()) // 3])
    _refused(lambda: load_image(cut_png, 64), cut_png, "cannot be decoded")
    fake = tmp_path / "fake.png"
    fake.write_text("this is a text file, not a PNG")
    _refused(lambda: load_image(fake, 64), fake, "not an image")
    _refused(lambda: load_image(tmp_path / "gone.png", 64), tmp_path / "gone.png", "does not exist")


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` (no pixel data): Pillow's open reads only this."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))
    return path


def test_load_refuses_huge_images_before_decoding(tmp_path):
    limit = Image.MAX_IMAGE_PIXELS
    over = _png_header(tmp_path / "big.png", 8193, 8192)    # just over 64 MP, under Pillow's own check
    _refused(lambda: load_image(over, 64), over, "megapixels", "8192 x 8192")
    bomb = _png_header(tmp_path / "bomb.png", 30_000, 30_000)   # over Pillow's decompression-bomb limit
    _refused(lambda: load_image(bomb, 64), bomb, "too large")
    assert Image.MAX_IMAGE_PIXELS == limit                 # Pillow's check was left on
    assert MAX_PIXELS == 8192 * 8192


def test_load_refuses_bad_size_and_fit(tmp_path):
    path = _save(tmp_path / "a.png", _rgb("coffee").resize((64, 64)))
    for bad in (63, 4097, 0, 128.0, True):
        _refused(lambda: load_image(path, bad), path, "size must be an integer in 64..4096")
    _refused(lambda: load_image(path, 64, "stretch"), path, "fit must be one of crop, pad")
