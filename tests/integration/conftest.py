"""Integration fixtures: a real ComfyUI server on CPU with this pack and tiny model fixtures.

Skipped, with one line naming the paths looked at, where no ComfyUI is installed. The server log
is attached to the report of every failing test.
"""
from __future__ import annotations

import pytest

from support import fixtures
from support.comfy_server import ComfyClient, ComfyServer, find_comfyui, skip_reason

_SERVERS: list[ComfyServer] = []


def pytest_collection_modifyitems(config, items):
    here = str(config.rootpath / "tests" / "integration")
    if find_comfyui() is None:
        marker = pytest.mark.skip(reason=skip_reason())
        for item in items:
            if str(item.fspath).startswith(here):
                item.add_marker(marker)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _SERVERS:
        for server in _SERVERS:
            report.sections.append((f"ComfyUI server log ({server.url})", server.log()[-20000:]))


@pytest.fixture(scope="session")
def comfyui_path():
    path = find_comfyui()
    if path is None:
        pytest.skip(skip_reason())
    return path


@pytest.fixture(scope="session")
def model_dirs(comfyui_path):
    dirs = fixtures.tiny_sd3(comfyui_path)
    dirs["open_clip"] = fixtures.random_open_clip()
    dirs["dtgen_fewshot"] = fixtures.real_photo_set()
    dirs.update(fixtures.copy_paste_sets())
    return {k: [v] for k, v in dirs.items()}


def start_server(comfyui_path, base_dir, model_dirs, **kw) -> ComfyServer:
    server = ComfyServer(comfyui=comfyui_path, base_dir=base_dir, model_dirs=model_dirs, **kw)
    _SERVERS.append(server)
    return server.start()


def start_training_server(comfyui_path, base_dir, model_dirs, extra: dict | None = None) -> ComfyServer:
    """A server whose LoraLoader also lists ComfyUI's ``output/loras`` (where Save LoRA writes, as
    the README maps it) and, per model folder, the extra folders in ``extra``."""
    (base_dir / "output" / "loras").mkdir(parents=True, exist_ok=True)
    dirs = dict(model_dirs)
    dirs["loras"] = [*dirs["loras"], base_dir / "output" / "loras"]
    for folder, path in (extra or {}).items():
        dirs[folder] = [*dirs.get(folder, []), path]
    return start_server(comfyui_path, base_dir, dirs)


@pytest.fixture
def api(server):
    """A client of the module's own ``server`` fixture."""
    c = ComfyClient(server.url)
    yield c
    c.close()


@pytest.fixture(scope="session")
def comfy_server(comfyui_path, model_dirs, tmp_path_factory):
    server = start_server(comfyui_path, tmp_path_factory.mktemp("comfy"), model_dirs)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(comfy_server):
    c = ComfyClient(comfy_server.url)
    yield c
    c.close()
