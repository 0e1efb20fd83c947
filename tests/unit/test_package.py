"""Packaging and layering rules of the pack, checked without ComfyUI."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

from support.pkg import BOOTSTRAP, ROOT



def test_import_without_comfyui_is_light():
    code = BOOTSTRAP + (
        "import json, sys\n"
        "import dtgen\n"
        "import dtgen.nodes.prompting.sampler, dtgen.nodes.curation.decide, dtgen.nodes.store.writer\n"
        "print(json.dumps({'entry': hasattr(dtgen, 'comfy_entrypoint'), 'version': dtgen.__version__,\n"
        "  'heavy': sorted(m for m in ('open_clip', 'comfy', 'comfy_api', 'torch') if m in sys.modules)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["entry"] is False, "comfy_entrypoint must only exist inside ComfyUI"
    assert re.fullmatch(r"\d+\.\d+\.\d+", data["version"])
    assert data["heavy"] == [], f"imported without need: {data['heavy']}"


def test_pyproject_has_what_the_registry_needs():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert project["name"] == "dtgen"
    from dtgen import __version__
    assert project["version"] == __version__, "pyproject version and dtgen.__version__ differ"
    assert (ROOT / project["license"]["file"]).is_file()
    assert project["urls"]["Repository"].startswith("https://")
    assert project["requires-python"].startswith(">=")
    assert comfy["PublisherId"] == "dtgen"
    assert comfy["DisplayName"] == "DTGen — few-shot synthetic datasets"
    assert comfy["Icon"] and comfy["requires-comfyui"] == ">=0.3.64"
    assert (ROOT / "docs" / "icon.png").is_file()


def _requirements(path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[<>=!~\[ ]", line)[0].lower())
    return names


def test_requirements_never_pull_torch():
    runtime = _requirements(ROOT / "requirements.txt")
    assert set(runtime) == {"open_clip_torch", "pyyaml", "numpy", "pillow"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = {re.split(r"[<>=!~\[ ]", d)[0].lower() for d in project["dependencies"]}
    assert listed == set(runtime), "pyproject dependencies and requirements.txt differ"
    for path in (ROOT / "requirements.txt", ROOT / "tests" / "requirements.txt"):
        assert not {"torch", "torchvision", "torchaudio"} & set(_requirements(path)), path


def test_published_archive_leaves_tests_out():
    ignored = (ROOT / ".comfyignore").read_text().split()
    assert "tests/" in ignored


def test_node_ids_and_categories_come_from_one_place():
    from dtgen.nodes.common.naming import category, node_id

    assert node_id("PromptSampler") == "DTGenPromptSampler"
    assert category("filtering") == "DTGen/filtering"
    for path in (ROOT / "nodes" / "adapters").glob("*.py"):
        text = path.read_text()
        if "io.Schema(" not in text:
            continue
        assert "node_id=node_id(" in text and "category=category(" in text, path
        assert 'node_id="' not in text, f"{path}: hard-coded node id"


def test_the_registry_archive_validates_packs_and_imports(tmp_path):
    """What the Comfy Registry and ComfyUI Manager will install once the pack is published there:
    comfy-cli's own ``node validate`` passes and ``node pack`` builds an archive that holds the pack
    (nodes, templates, locales, prompts, requirements) and not the tests, and that imports."""
    import shutil
    import zipfile

    src = tmp_path / "checkout"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "__pycache__", "node.zip", ".gpu_carry"))
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "DO_NOT_TRACK": "1"}
    cli = [sys.executable, "-m", "comfy_cli", "--skip-prompt"]
    subprocess.run(cli + ["tracking", "disable"], cwd=src, env=env, capture_output=True, timeout=120)
    for command in (["node", "validate"], ["node", "pack"]):
        done = subprocess.run(cli + command, cwd=src, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
    with zipfile.ZipFile(src / "node.zip") as archive:
        names = archive.namelist()
        top = {n.split("/")[0] for n in names}
        assert {"__init__.py", "nodes", "example_workflows", "locales", "prompts", "requirements.txt",
                "pyproject.toml", "README.md"} <= top, sorted(top)
        assert not top & {"tests", "bench", ".ci", ".git"}, sorted(top)
        assert "nodes/adapters/web/dtgen_status.js" in names
        archive.extractall(tmp_path / "custom_nodes" / "dtgen")
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('dtgen', {str(tmp_path / 'custom_nodes' / 'dtgen' / '__init__.py')!r}, "
            "submodule_search_locations=[])\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['dtgen'] = m; spec.loader.exec_module(m)\n"
            "print(m.__version__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"], done.stderr
