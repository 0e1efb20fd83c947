"""Which ComfyUI the demo uses when its port is taken: the tiny models' folders reach only a server
the demo starts, so a ComfyUI already on the port is reused only with the real weights. Which
template it queues, and its few-shot photo set: drawn placeholders or a bounded copy of
--real-images. No real ComfyUI runs here: the one "on the port" is the stand-in from fake_comfy.py
and LocalServer.start is replaced by a recorder."""
from __future__ import annotations

import argparse

import pytest
from dtgen.nodes.fewshot.imageset import FewShotError, scan
from dtgen.runner import demo, demo_photos
from dtgen.runner.local_server import LocalServer, LocalServerError, free_port, port_in_use
from dtgen.runner.workflow import Workflow
from fake_comfy import FakeComfy
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
    assert model_dirs == {**{folder: [tmp_path / "cache" / folder] for folder in demo.TINY},
                          "dtgen_fewshot": [photos.parent]}
    assert sorted(p.name for p in photos.iterdir()) == sorted(demo.TINY_CLASSES.split(","))
    out = capsys.readouterr().out
    assert f"port {port} is busy with another ComfyUI; the demo starts its own on port {own}" in out
    assert f"drew 3 PLACEHOLDER photos per class in {photos}" in out
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


def test_the_tiny_models_stay_in_the_workspace_unless_told_otherwise(tmp_path):
    import argparse

    from dtgen.runner.demo import add_demo_args, models_cache

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
    assert model_dirs == {"dtgen_fewshot": [photos.parent]} and not cpu   # the template's GPU settings
    assert [im.path.name for im in scan(photos)] == ["plate_clean_00.png", "plate_clean_01.png"]
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
