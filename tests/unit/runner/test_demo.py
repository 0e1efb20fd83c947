"""Which ComfyUI the demo uses when its port is taken: the tiny models' folders reach only a server
the demo starts, so a ComfyUI already on the port is reused only with the real weights. Which
template it queues, and its few-shot photo set: drawn placeholders or a bounded copy of
--real-images. The copy-paste step's sets: drawn cutouts (exact alpha) and table textures, or bounded
copies of --cutouts / --backgrounds that the synthesis loaders accept; its template and queue loop.
No real ComfyUI runs here: the one "on the port" is the stand-in from fake_comfy.py and
LocalServer.start is replaced by a recorder."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
from dtgen.nodes.fewshot.imageset import FewShotError, scan
from dtgen.nodes.synthesis.backgrounds import load_backgrounds
from dtgen.nodes.synthesis.cutouts import load_cutouts
from dtgen.runner.demo import command as demo
from dtgen.runner.demo import cutouts as demo_cutouts
from dtgen.runner.demo import photos as demo_photos
from dtgen.runner.local_server import (
    LocalServer,
    LocalServerError,
    free_port,
    port_in_use,
)
from dtgen.runner.workflow import Workflow
from fake_comfy import FakeComfy
from PIL import Image, ImageDraw
from support.not_comfy import not_comfy_server


@pytest.mark.parametrize("busy, comfy, tiny, expected", [
    (False, False, False, demo.START),
    (False, False, True, demo.START),
    (True, True, False, demo.REUSE),
    (True, True, True, demo.START_ELSEWHERE),
    (True, False, False, demo.REFUSE),
    (True, False, True, demo.REFUSE),
])
def test_choose_server(busy, comfy, tiny, expected):
    assert demo.choose_server(busy, comfy, tiny) == expected


@pytest.fixture
def comfy_on_port(tmp_path):
    fake = FakeComfy(tmp_path / "fake-output")
    yield fake
    fake.stop()



def test_pick_port_starts_elsewhere_only_for_the_tiny_models(comfy_on_port):
    port = comfy_on_port.httpd.server_port
    said = []
    own, reuse = demo.pick_port(port, tiny=True, say=said.append)
    assert own != port and not reuse and not port_in_use(own)
    assert said == [f"port {port} is busy with another ComfyUI; the demo starts its own on port {own}"]
    said.clear()
    assert demo.pick_port(port, tiny=False, say=said.append) == (port, True) and said == []


def test_pick_port_on_a_free_port_and_on_a_foreign_program():
    with not_comfy_server() as port:
        for tiny in (True, False):
            with pytest.raises(LocalServerError, match=f"port {port} is used by a program that is not ComfyUI"):
                demo.pick_port(port, tiny=tiny, say=print)
    said = []
    assert demo.pick_port(port, tiny=True, say=said.append) == (port, False) and said == []


class _Started(Exception):
    pass


@pytest.fixture
def comfyui_tree(tmp_path):
    """A folder find_comfyui accepts, and a models cache holding the tiny models (so none is built)."""
    root = tmp_path / "ComfyUI"
    (root / "comfy").mkdir(parents=True)
    (root / "main.py").write_text("")
    for folder, name in demo.TINY.items():
        (tmp_path / "cache" / folder).mkdir(parents=True)
        (tmp_path / "cache" / folder / name).write_bytes(b"")
    return root


def demo_args(tmp_path, comfyui, port, *extra):
    p = argparse.ArgumentParser()
    demo.add_demo_args(p)
    return p.parse_args(["--comfyui", str(comfyui), "--python", "python", "--port", str(port),
                         "--workspace", str(tmp_path / "ws"), "--models-cache", str(tmp_path / "cache"), *extra])


def test_tiny_demo_starts_its_own_server_beside_a_running_comfyui(tmp_path, comfyui_tree, comfy_on_port,
                                                                  monkeypatch, capsys):
    started = []

    def record(self, timeout=180.0):
        started.append((self.port, self.model_dirs, self.cpu))
        raise _Started

    monkeypatch.setattr(LocalServer, "start", record)
    port = comfy_on_port.httpd.server_port
    with pytest.raises(_Started):
        demo.cmd_demo(demo_args(tmp_path, comfyui_tree, port))
    [(own, model_dirs, cpu)] = started
    assert own != port and cpu
    photos = tmp_path / "ws" / demo.PHOTO_SETS / demo.PLACEHOLDER_SET
    cut = tmp_path / "ws" / demo_cutouts.CUTOUT_SETS / demo_cutouts.PLACEHOLDER_CUTOUTS
    bg = tmp_path / "ws" / demo_cutouts.BACKGROUND_SETS / demo_cutouts.PLACEHOLDER_BACKGROUNDS
    assert model_dirs == {**{folder: [tmp_path / "cache" / folder] for folder in demo.TINY},
                          "dtgen_fewshot": [photos.parent], "dtgen_cutouts": [cut.parent],
                          "dtgen_backgrounds": [bg.parent]}
    assert sorted(p.name for p in photos.iterdir()) == sorted(demo.TINY_CLASSES.split(","))
    assert sorted(load_cutouts(cut)) == sorted(demo.TINY_CLASSES.split(","))   # the photo classes
    assert len(load_backgrounds(bg)) == len(demo_cutouts.TABLES)
    out = capsys.readouterr().out
    assert f"port {port} is busy with another ComfyUI; the demo starts its own on port {own}" in out
    assert f"drew 3 PLACEHOLDER photos per class in {photos}" in out
    assert f"drew 3 PLACEHOLDER cutouts per class in {cut}" in out
    assert f"drew 4 PLACEHOLDER table textures (wood, linen, gingham) in {bg}" in out
    assert f"starting ComfyUI on http://127.0.0.1:{own}" in out
    assert not comfy_on_port.history and not comfy_on_port.pending   # nothing was queued on the user's server


def test_demo_with_real_weights_reuses_the_running_comfyui(tmp_path, comfyui_tree, comfy_on_port, monkeypatch,
                                                           capsys):
    for path in demo.real_models(comfyui_tree, Workflow.load(demo.WORKFLOW)).values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")

    def refuse(self, timeout=180.0):
        raise AssertionError("the demo started a server although a ComfyUI runs on its port")

    monkeypatch.setattr(LocalServer, "start", refuse)
    port = comfy_on_port.httpd.server_port
    assert demo.cmd_demo(demo_args(tmp_path, comfyui_tree, port, "--classes", "plate_clean", "--quota", "1")) == 0
    out = capsys.readouterr().out
    assert f"using the ComfyUI already running at http://127.0.0.1:{port}" in out and "busy" not in out
    ds = comfy_on_port.output_dir / demo.DATASET
    assert f"dataset: {ds}" in out and comfy_on_port.executed
    # its folders reach only a server the demo starts: no copy-paste step, said, nothing drawn
    assert f"no copy-paste step: its cutout and background folders reach only a ComfyUI the demo starts, and " \
           f"one already runs on port {port}" in out
    assert "copy-paste dataset" not in out and not (tmp_path / "ws" / demo_cutouts.CUTOUT_SETS).exists()


def test_the_tiny_models_stay_in_the_workspace_unless_told_otherwise(tmp_path):
    import argparse

    from dtgen.runner.demo.command import add_demo_args, models_cache

    parser = argparse.ArgumentParser()
    add_demo_args(parser)
    assert models_cache(parser.parse_args(["--workspace", str(tmp_path / "ws")])) == tmp_path / "ws" / "models-demo"
    chosen = parser.parse_args(["--workspace", str(tmp_path / "ws"), "--models-cache", str(tmp_path / "m")])
    assert models_cache(chosen) == tmp_path / "m"


def test_the_few_shot_template_runs_with_the_tiny_models_or_the_users_photos(tmp_path):
    assert demo.choose_workflow(tiny=True, real_images=None) == demo.TRAIN_WORKFLOW
    assert demo.choose_workflow(tiny=False, real_images=tmp_path) == demo.TRAIN_WORKFLOW
    assert demo.choose_workflow(tiny=True, real_images=tmp_path) == demo.TRAIN_WORKFLOW
    assert demo.choose_workflow(tiny=False, real_images=None) == demo.WORKFLOW
    wf = Workflow.load(demo.TRAIN_WORKFLOW)   # every tiny setting names an input the template has
    for assignment in (*demo.TINY_SETTINGS, *demo.TINY_TRAINING, f"{demo.FEWSHOT}.folder=x"):
        wf.apply_set(assignment)
    train = next(n["inputs"] for n in wf.graph.values() if n["class_type"] == "TrainLoraNode")
    assert train["gradient_checkpointing"] is False and train["training_dtype"] == "fp32" and train["steps"] == 3


def test_placeholder_photos_are_deterministic_and_a_valid_image_folder(tmp_path):
    labels = demo.TINY_CLASSES.split(",")
    first = demo_photos.placeholder_set(tmp_path / "a", labels)
    second = demo_photos.placeholder_set(tmp_path / "b", labels)
    images = scan(first)
    assert sorted({im.label for im in images}) == sorted(labels)
    assert len(images) == demo_photos.PER_CLASS * len(labels) and not any(im.caption for im in images)
    for im in images:
        assert im.path.read_bytes() == (second / im.label / im.path.name).read_bytes()
    clean, dirty = (demo_photos.draw_placeholder(label, 0) for label in ("plate_clean", "plate_heavily_dirty"))
    assert clean.size == (demo_photos.SIZE,) * 2 and clean.tobytes() != dirty.tobytes()
    (first / "stale").mkdir()
    demo_photos.placeholder_set(first, labels[:1])   # the set is replaced, not added to
    assert [p.name for p in first.iterdir()] == labels[:1]


def test_real_images_are_copied_with_their_captions_only(tmp_path):
    src = demo_photos.placeholder_set(tmp_path / "mine", ["plate_clean", "bowl_clean"], per_class=2)
    (src / "plate_clean" / "plate_clean_00.txt").write_text("dtgtableware, my plate\n")
    (src / "plate_clean" / "notes.md").write_text("not an image")
    images = demo_photos.copy_photo_set(src, tmp_path / "set", labels=demo.TINY_CLASSES.split(","))
    assert len(images) == 4
    copied = scan(tmp_path / "set")
    assert [(im.label, im.path.name, im.caption) for im in copied] == [
        (im.label, im.path.name, im.caption) for im in images]
    assert copied[2].caption == "dtgtableware, my plate" and not (tmp_path / "set" / "plate_clean" / "notes.md").exists()


def test_real_images_outside_the_budget_or_the_pack_are_refused_naming_the_folder(tmp_path):
    assert (demo_photos.MAX_FILES, demo_photos.MAX_BYTES) == (2_000, 2 * 1024**3)
    many = tmp_path / "many"
    (many / "plate_clean").mkdir(parents=True)
    for i in range(demo_photos.MAX_FILES + 1):
        (many / "plate_clean" / f"{i}.txt").touch()
    big = tmp_path / "big"
    (big / "plate_clean").mkdir(parents=True)
    with open(big / "plate_clean" / "huge.png", "wb") as f:
        f.truncate(demo_photos.MAX_BYTES + 1)   # sparse: takes no disk space
    for src in (many, big):
        with pytest.raises(ValueError, match=f"^--real-images {src}: more than 2,000 files or 2 GiB") as e:
            demo_photos.copy_photo_set(src, tmp_path / "set", labels=["plate_clean"])
        assert "\n" not in str(e.value)
    assert not (tmp_path / "set").exists()

    with pytest.raises(ValueError, match=f"^--real-images {tmp_path / 'nowhere'}: not a folder"):
        demo_photos.copy_photo_set(tmp_path / "nowhere", tmp_path / "set", labels=["plate_clean"])
    teapot = demo_photos.placeholder_set(tmp_path / "teapot", ["teapot"], per_class=1)
    with pytest.raises(ValueError, match=f"^--real-images {teapot}: class folder.s. teapot are not classes"):
        demo_photos.copy_photo_set(teapot, tmp_path / "set", labels=["plate_clean"])
    (teapot / "teapot" / "link.png").symlink_to(teapot / "teapot" / "teapot_00.png")
    with pytest.raises(FewShotError, match="is a symlink"):
        demo_photos.copy_photo_set(teapot, tmp_path / "set", labels=["teapot"])


def _real_weights(comfyui_tree):
    for template in (demo.WORKFLOW, demo.TRAIN_WORKFLOW):
        for path in demo.real_models(comfyui_tree, Workflow.load(template)).values():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")


def test_real_images_with_real_weights_start_a_server_with_the_photo_set(tmp_path, comfyui_tree, monkeypatch,
                                                                         capsys):
    _real_weights(comfyui_tree)
    started = []

    def record(self, timeout=180.0):
        started.append((self.model_dirs, self.cpu))
        raise _Started

    monkeypatch.setattr(LocalServer, "start", record)
    src = demo_photos.placeholder_set(tmp_path / "mine", ["plate_clean"], per_class=2)
    with pytest.raises(_Started):
        demo.cmd_demo(demo_args(tmp_path, comfyui_tree, free_port(), "--real-images", str(src)))
    [(model_dirs, cpu)] = started
    photos = tmp_path / "ws" / demo.PHOTO_SETS / demo.REAL_SET
    cut = tmp_path / "ws" / demo_cutouts.CUTOUT_SETS / demo_cutouts.PLACEHOLDER_CUTOUTS
    assert model_dirs == {"dtgen_fewshot": [photos.parent], "dtgen_cutouts": [cut.parent],
                          "dtgen_backgrounds": [tmp_path / "ws" / demo_cutouts.BACKGROUND_SETS]}
    assert not cpu   # the template's GPU settings
    assert [im.path.name for im in scan(photos)] == ["plate_clean_00.png", "plate_clean_01.png"]
    assert list(load_cutouts(cut)) == ["plate_clean"]   # drawn for the classes of the user's photos
    assert f"copied 2 photo(s) in 1 class(es) from {src} to {photos}" in capsys.readouterr().out


def test_real_images_refuse_a_comfyui_already_on_the_port(tmp_path, comfyui_tree, comfy_on_port, capsys):
    _real_weights(comfyui_tree)
    port = comfy_on_port.httpd.server_port
    src = demo_photos.placeholder_set(tmp_path / "mine", ["plate_clean"], per_class=1)
    with pytest.raises(LocalServerError, match=f"--real-images needs a ComfyUI the demo starts.*port {port}") as e:
        demo.cmd_demo(demo_args(tmp_path, comfyui_tree, port, "--real-images", str(src)))
    assert "\n" not in str(e.value)
    assert not comfy_on_port.history and not comfy_on_port.pending
    assert not (tmp_path / "ws" / demo.PHOTO_SETS).exists()


# -- the copy-paste step ---------------------------------------------------------------------------
def test_the_copy_paste_options():
    p = argparse.ArgumentParser()
    demo.add_demo_args(p)
    plain = p.parse_args([])
    assert plain.cutouts is None and plain.backgrounds is None and not plain.no_copy_paste
    chosen = p.parse_args(["--cutouts", "c", "--backgrounds", "b", "--no-copy-paste"])
    assert (chosen.cutouts, chosen.backgrounds, chosen.no_copy_paste) == (demo.Path("c"), demo.Path("b"), True)


@pytest.mark.parametrize("label", demo.TINY_CLASSES.split(","))
def test_drawn_cutouts_have_the_exact_alpha_of_the_drawn_object(label):
    for i in range(demo_photos.PER_CLASS):
        for size in (demo_photos.SIZE, demo_cutouts.CUTOUT_SIZE):
            rgba = np.asarray(demo_photos.draw_cutout(label, i, size))
            alpha = rgba[..., 3]
            assert set(np.unique(alpha)) == {0, 255}   # no soft edge: the object is the drawn disc
            cx, cy, r = demo_photos.placeholder_disc(label, i, size)
            disc = Image.new("L", (size, size), 0)
            ImageDraw.Draw(disc).ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
            assert np.array_equal(alpha, np.asarray(disc))   # rim, well and stains stay on the dish
            yy, xx = np.mgrid[:size, :size] + 0.5   # pixel centres: the disc within rasterisation
            d = np.hypot(xx - cx, yy - cy)
            assert (alpha[d < r - 1.5] == 255).all() and (alpha[d > r + 1.5] == 0).all()
            assert (rgba[alpha == 0, :3] == 0).all()   # nothing drawn outside the object
        # the placeholder photo is that object on a table colour: the same pixels where alpha is set
        photo = np.asarray(demo_photos.draw_placeholder(label, i))
        obj = np.asarray(demo_photos.draw_cutout(label, i))
        inside = obj[..., 3] == 255
        assert np.array_equal(photo[inside], obj[inside][:, :3])
        assert len({tuple(px) for px in photo[~inside]}) == 1   # the table


def test_drawn_cutouts_are_a_set_load_cutouts_accepts(tmp_path):
    labels = demo.TINY_CLASSES.split(",")
    first = demo_cutouts.placeholder_cutouts(tmp_path / "a", labels)
    second = demo_cutouts.placeholder_cutouts(tmp_path / "b", labels)
    found = load_cutouts(first)
    assert sorted(found) == sorted(labels)
    for label, cutouts in found.items():
        assert [c.path.name for c in cutouts] == [f"{label}_{i:02d}.png" for i in range(demo_photos.PER_CLASS)]
        for i, c in enumerate(cutouts):
            assert c.mask_path is None and set(np.unique(c.alpha)) == {0.0, 1.0}
            # cropped to the object: the alpha is the drawn one, cut to its bounding box
            drawn = np.asarray(demo_photos.draw_cutout(label, i, demo_cutouts.CUTOUT_SIZE))[..., 3] > 0
            ys, xs = np.nonzero(drawn)
            assert np.array_equal(c.alpha > 0, drawn[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
            assert (c.path.read_bytes() == (second / label / c.path.name).read_bytes())
    (first / "stale").mkdir()
    demo_cutouts.placeholder_cutouts(first, labels[:1])   # replaced, not added to
    assert [p.name for p in first.iterdir()] == labels[:1]


def test_drawn_backgrounds_are_deterministic_textures_load_backgrounds_accepts(tmp_path):
    first = demo_cutouts.placeholder_backgrounds(tmp_path / "a")
    second = demo_cutouts.placeholder_backgrounds(tmp_path / "b")
    bgs = load_backgrounds(first)
    assert [b.name for b in bgs.entries] == sorted(name for name, _, _ in demo_cutouts.TABLES)
    assert [b.sha256 for b in bgs.entries] == [b.sha256 for b in load_backgrounds(second).entries]
    pixels = [np.asarray(Image.open(b.path)) for b in bgs.entries]
    for a in pixels:
        assert a.shape == (demo_cutouts.BACKGROUND_SIZE,) * 2 + (3,)
        assert a.std() > 3   # a texture, not a flat colour
    assert len({a.tobytes() for a in pixels}) == len(pixels)
    assert bgs.fitted(0, 256).shape == (256, 256, 3)
    with pytest.raises(ValueError, match="table kind 'marble'"):
        demo_cutouts.draw_table("marble", ((1, 2, 3),), 0)


def _user_cutouts(root):
    """Two classes: an RGBA PNG, and a JPEG with its _mask.png."""
    yy, xx = np.mgrid[:40, :60]
    disc = ((yy - 20) ** 2 + (xx - 30) ** 2 <= 15 ** 2)
    rgb = np.zeros((40, 60, 3), np.uint8) + np.array([200, 80, 40], np.uint8)
    (root / "cup").mkdir(parents=True)
    Image.fromarray(np.dstack([rgb, disc.astype(np.uint8) * 255])).save(root / "cup" / "cup1.png")
    (root / "mug").mkdir()
    Image.fromarray(rgb).save(root / "mug" / "mug1.jpg")
    Image.fromarray(disc.astype(np.uint8) * 255).save(root / "mug" / "mug1_mask.png")
    (root / "mug" / "notes.md").write_text("ignored")
    return root


def test_user_cutouts_and_backgrounds_are_copied_when_the_loaders_accept_them(tmp_path):
    src = _user_cutouts(tmp_path / "mine")
    assert demo_cutouts.copy_cutout_set(src, tmp_path / "set") == {"cup": 1, "mug": 1}
    assert sorted(str(p.relative_to(tmp_path / "set")) for p in (tmp_path / "set").rglob("*") if p.is_file()) == [
        "cup/cup1.png", "mug/mug1.jpg", "mug/mug1_mask.png"]
    assert {k: len(v) for k, v in load_cutouts(tmp_path / "set").items()} == {"cup": 1, "mug": 1}

    bg = tmp_path / "tables"
    bg.mkdir()
    for k in range(2):
        Image.fromarray(np.full((30, 50, 3), 40 * k, np.uint8)).save(bg / f"t{k}.jpg")
    (bg / "readme.txt").write_text("ignored")
    assert demo_cutouts.copy_background_set(bg, tmp_path / "bgs") == 2
    assert sorted(p.name for p in (tmp_path / "bgs").iterdir()) == ["t0.jpg", "t1.jpg"]


def test_user_cutouts_and_backgrounds_the_node_would_refuse_are_refused_in_one_line(tmp_path):
    src = _user_cutouts(tmp_path / "mine")
    (src / "mug" / "mug1_mask.png").unlink()   # a JPEG without transparency or mask
    with pytest.raises(ValueError, match=r"^--cutouts: .*mug1.jpg: has no transparency and no mask file") as e:
        demo_cutouts.copy_cutout_set(src, tmp_path / "set")
    assert "\n" not in str(e.value) and not (tmp_path / "set").exists()
    with pytest.raises(ValueError, match=f"^--cutouts {tmp_path / 'nowhere'}: not a folder; expected <folder>/<label>/"):
        demo_cutouts.copy_cutout_set(tmp_path / "nowhere", tmp_path / "set")
    with pytest.raises(ValueError, match=f"^--cutouts {src}: more than 2 files or"):
        demo_cutouts.copy_cutout_set(src, tmp_path / "set", max_files=2)
    flat = tmp_path / "flat"
    flat.mkdir()
    with pytest.raises(ValueError, match=f"^--backgrounds: {flat}: folder holds no background image"):
        demo_cutouts.copy_background_set(flat, tmp_path / "bgs")
    (flat / "sub").mkdir()
    with pytest.raises(ValueError, match=r"^--backgrounds: .*sub: is a folder"):
        demo_cutouts.copy_background_set(flat, tmp_path / "bgs")
    assert not (tmp_path / "bgs").exists()


def test_the_copy_paste_template_is_set_up_for_the_demo():
    wf = Workflow.load(demo.TRAIN_WORKFLOW)
    wf.set_models(clip_weights=demo.TINY["open_clip"])
    graph = demo_cutouts.copy_paste_graph("cut_set", "bg_set", 3, clip=demo_cutouts.clip_inputs(wf.graph), size=256)
    by = {n["class_type"]: n["inputs"] for n in graph.values()}
    assert by["DTGenCopyPaste"]["cutouts"] == "cut_set" and by["DTGenCopyPaste"]["backgrounds"] == "bg_set"
    assert by["DTGenCopyPaste"]["quota_per_class"] == 3 and by["DTGenCopyPaste"]["size"] == 256
    assert by["DTGenCopyPaste"]["classes"] == ""   # every class folder of the set
    for kind in ("DTGenCopyPaste", "DTGenClipFilter", "DTGenDatasetWriter"):
        assert by[kind]["dataset_name"] == demo_cutouts.DATASET
    assert by["DTGenDatasetWriter"]["masks"] == ["1", 1]   # the instance masks reach the writer
    assert by["DTGenClipLoader"]["weights"] == demo.TINY["open_clip"] and by["DTGenClipLoader"]["arch"] == "ViT-B-32"
    template = demo_cutouts.copy_paste_graph("c", "b", 1)   # real weights: the template's size and CLIP
    assert next(n for n in template.values() if n["class_type"] == "DTGenCopyPaste")["inputs"]["size"] == 512


def test_no_copy_paste_skips_the_step(tmp_path, comfyui_tree, monkeypatch, capsys):
    started = []

    def record(self, timeout=180.0):
        started.append(self.model_dirs)
        raise _Started

    monkeypatch.setattr(LocalServer, "start", record)
    with pytest.raises(_Started):
        demo.cmd_demo(demo_args(tmp_path, comfyui_tree, free_port(), "--no-copy-paste"))
    [model_dirs] = started
    assert "dtgen_cutouts" not in model_dirs and "dtgen_backgrounds" not in model_dirs
    assert not (tmp_path / "ws" / demo_cutouts.CUTOUT_SETS).exists() and "cutouts" not in capsys.readouterr().out


def test_user_cutouts_and_backgrounds_reach_the_server_the_demo_starts(tmp_path, comfyui_tree, monkeypatch, capsys):
    started = []

    def record(self, timeout=180.0):
        started.append(self.model_dirs)
        raise _Started

    monkeypatch.setattr(LocalServer, "start", record)
    src = _user_cutouts(tmp_path / "mine")
    bg = demo_cutouts.placeholder_backgrounds(tmp_path / "tables")
    with pytest.raises(_Started):
        demo.cmd_demo(demo_args(tmp_path, comfyui_tree, free_port(), "--cutouts", str(src), "--backgrounds", str(bg)))
    [model_dirs] = started
    cut = tmp_path / "ws" / demo_cutouts.CUTOUT_SETS / demo_cutouts.USER_CUTOUTS
    bgs = tmp_path / "ws" / demo_cutouts.BACKGROUND_SETS / demo_cutouts.USER_BACKGROUNDS
    assert model_dirs["dtgen_cutouts"] == [cut.parent] and model_dirs["dtgen_backgrounds"] == [bgs.parent]
    assert sorted(load_cutouts(cut)) == ["cup", "mug"] and len(load_backgrounds(bgs)) == len(demo_cutouts.TABLES)
    out = capsys.readouterr().out
    assert f"copied 2 cutout(s) in 2 class(es) from {src} to {cut}" in out
    assert f"copied 4 background(s) from {bg} to {bgs}" in out and "PLACEHOLDER cutouts" not in out


def test_cutouts_refuse_a_comfyui_already_on_the_port(tmp_path, comfyui_tree, comfy_on_port):
    _real_weights(comfyui_tree)
    port = comfy_on_port.httpd.server_port
    src = _user_cutouts(tmp_path / "mine")
    with pytest.raises(LocalServerError, match=f"^--cutouts and --backgrounds need a ComfyUI the demo starts.*"
                                               f"port {port}") as e:
        demo.cmd_demo(demo_args(tmp_path, comfyui_tree, port, "--cutouts", str(src)))
    assert "\n" not in str(e.value) and not comfy_on_port.history and not comfy_on_port.pending
    assert not (tmp_path / "ws" / demo_cutouts.CUTOUT_SETS).exists()
