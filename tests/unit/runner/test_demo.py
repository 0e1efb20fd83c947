"""Which ComfyUI the demo uses when its port is taken: the tiny models' folders reach only a server
the demo starts, so a ComfyUI already on the port is reused only with the real weights. No real
ComfyUI runs here: the one "on the port" is the stand-in from fake_comfy.py and LocalServer.start
is replaced by a recorder."""
from __future__ import annotations

import argparse

import pytest
from dtgen.runner import demo
from dtgen.runner.local_server import LocalServer, LocalServerError, port_in_use
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
    assert model_dirs == {folder: [tmp_path / "cache" / folder] for folder in demo.TINY}
    out = capsys.readouterr().out
    assert f"port {port} is busy with another ComfyUI; the demo starts its own on port {own}" in out
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
