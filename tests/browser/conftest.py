"""Browser tests: the ComfyUI editor in headless Chromium, driven by driver.mjs (playwright-core).

Needs ComfyUI (as for tests/integration), Debian's ``chromium`` (``$CHROMIUM`` overrides
/usr/bin/chromium), ``node``, and the npm package playwright-core, which .ci/run installs into
``~/.cache/dtgen-ci/node`` (``$DTGEN_NODE_MODULES`` names another node_modules folder). Where one
is missing, every browser test is skipped, reported as one line naming what is missing.

The driver runs once per session against its own server; the tests assert on what it observed.
With ``DTGEN_UPDATE_SCREENSHOTS=1`` the session also refreshes docs/screenshots/editor.png and the
template thumbnails example_workflows/<name>.jpg from its screenshots.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import fixtures
from support.comfy_server import ComfyClient, ComfyServer, find_comfyui
from support.pkg import ROOT

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # browser_env, shared with the test module

from browser_env import chromium_path, playwright_path, skip_reason  # noqa: E402

EXAMPLES = ROOT / "example_workflows"
# The editor settings of a fresh user that would cover or clutter the canvas.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
            "LiteGraph.Canvas.MinFontSizeForLOD": 0}
QUEUED = "dtgen_sd35_lora"
QUEUED_COUNT = 8
QUEUED_DATASET = "browser_run"
THUMB = 512   # template thumbnails: square, sharp at 2x in the browser's 256 px card


def workflow_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(EXAMPLES.glob("*.json"))}


def fixture_swap() -> dict:
    """Widget values that point the queued workflow at the test fixtures and keep it small."""
    return {
        "CheckpointLoaderSimple": {"ckpt_name": fixtures.CHECKPOINT_FP8_SCALED},   # the layout the templates name
        "LoraLoader": {"lora_name": fixtures.LORA},
        "DTGenClipLoader": {"weights": fixtures.CLIP_WEIGHTS},
        "EmptySD3LatentImage": {"width": 128, "height": 128},
        "KSampler": {"steps": 4},
        "DTGenPromptSampler": {"count": QUEUED_COUNT},
        "DTGenClipFilter": {"dataset_name": QUEUED_DATASET},
        "DTGenDatasetWriter": {"dataset_name": QUEUED_DATASET},
    }


FINALIZED_DATASET = "browser_finalized"
TRAINED = "dtgen_sd35_train_lora"


def train_swap() -> dict:
    """The training template on the fixtures: the tiny SD3, 64 px photos, 3 fp32 steps."""
    return {
        "DTGenTrainCheckpointLoader": {"ckpt_name": fixtures.CHECKPOINT_FP8_SCALED},
        "DTGenFewShotImages": {"size": 64},
        "TrainLoraNode": {"steps": 3, "rank": 4, "training_dtype": "fp32", "lora_dtype": "fp32",
                          "gradient_checkpointing": False, "grad_accumulation_steps": 1},
    }


def finalize_swap() -> dict:
    """The queued template again, two items into its own dataset, for the write + finalize run."""
    swap = fixture_swap()
    swap["DTGenPromptSampler"] = {"count": 2, "dataset_name": FINALIZED_DATASET}
    for node in ("DTGenClipFilter", "DTGenDatasetWriter"):
        swap[node] = {"dataset_name": FINALIZED_DATASET}
    return swap


class EditorRun:
    """What driver.mjs saw, plus the server, the screenshots folder and what was queued."""

    queued, count, dataset, finalized_dataset, trained = QUEUED, QUEUED_COUNT, QUEUED_DATASET, FINALIZED_DATASET, TRAINED

    def __init__(self, result: dict, server: ComfyServer, shots: Path):
        self.result, self.server, self.shots = result, server, shots
        self.workflows = {w["name"]: w for w in result["workflows"]}
        self.swap, self.train_swap = fixture_swap(), train_swap()
        self.object_info = ComfyClient(server.url).get_json("/object_info")


@pytest.fixture(scope="session")
def editor_run(tmp_path_factory) -> EditorRun:
    if skip_reason():
        pytest.skip(skip_reason())
    comfyui = find_comfyui()
    dirs = fixtures.tiny_sd3(comfyui)
    dirs["open_clip"] = fixtures.random_open_clip()
    dirs["dtgen_fewshot"] = fixtures.real_photo_set()
    dirs.update(fixtures.copy_paste_sets())
    base = tmp_path_factory.mktemp("browser")
    server = ComfyServer(comfyui=comfyui, base_dir=base / "comfy", model_dirs={k: [v] for k, v in dirs.items()})
    server.start()
    try:
        client = ComfyClient(server.url)
        for key, value in SETTINGS.items():
            status, _ = client.post_json(f"/settings/{key}", value)
            assert status == 200, f"POST /settings/{key} answered {status}"
        shots = base / "shots"
        shots.mkdir()
        config = {
            "url": server.url, "chromium": chromium_path(), "playwright": str(playwright_path()),
            "userDataDir": str(base / "chromium-profile"), "shotsDir": str(shots), "timeoutMs": 600_000,
            "workflows": [{"name": n, "path": str(p)} for n, p in workflow_files().items()],
            "queue": {"name": QUEUED, "swap": fixture_swap()},
            "finalize": {"swap": finalize_swap()},
            "alsoQueue": [{"name": TRAINED, "swap": train_swap()}],
            "handBuilt": {"checkpoint": fixtures.CHECKPOINT, "clipWeights": fixtures.CLIP_WEIGHTS},
        }
        (base / "config.json").write_text(json.dumps(config))
        proc = subprocess.run(["node", str(HERE / "driver.mjs"), str(base / "config.json")],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (f"driver.mjs failed ({proc.returncode})\n{proc.stderr[-4000:]}\n"
                                      f"--- server log ---\n{server.log()[-4000:]}")
        run = EditorRun(json.loads(proc.stdout.strip().splitlines()[-1]), server, shots)
        if os.environ.get("DTGEN_UPDATE_SCREENSHOTS") == "1":
            update_screenshots(shots)
        yield run
    finally:
        server.stop()


def update_screenshots(shots: Path) -> None:
    from PIL import Image

    target = ROOT / "docs" / "screenshots"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shots / "editor.png", target / "editor.png")
    shutil.copyfile(shots / "finalized.png", target / "finalized.png")   # every DTGen node's text
    for name in workflow_files():
        # the template browser shows a thumbnail in a 256 x 256 box: a square crop of the graph's
        # start (model loader, DTGen Prompt Sampler with its pack, mode and quota) stays readable
        image = Image.open(shots / f"{name}.png").convert("RGB")
        side = min(image.size)
        image.crop((0, (image.height - side) // 2, side, (image.height + side) // 2)).resize(
            (THUMB, THUMB), Image.LANCZOS).save(EXAMPLES / f"{name}.jpg", quality=88, optimize=True)
