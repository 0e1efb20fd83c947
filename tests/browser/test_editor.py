"""The UI-format example workflows in the real ComfyUI editor (frontend 1.27, headless Chromium).

Each workflow is loaded with ``app.loadGraphData``, as the template browser does. The editor must
know every node type, keep every widget value of the file, and queue exactly the API twin; the main
workflow, pointed at the test fixtures, is queued from the editor and must run to completion.
"""
from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from PIL import Image

from browser_env import skip_reason
from support.pkg import ROOT

if skip_reason():  # one report line for the whole module
    pytest.skip(skip_reason(), allow_module_level=True)
pytestmark = pytest.mark.browser
EXAMPLES = ROOT / "example_workflows"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.json"))


def _load_converter():
    path = ROOT / "tools" / "make_ui_workflows.py"
    spec = importlib.util.spec_from_file_location("dtgen_tools_make_ui_workflows", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ui_tool = _load_converter()
PACK_MARKERS = ("dtgen", "DTGen")


def file_nodes(name: str) -> dict[int, dict]:
    return {n["id"]: n for n in json.loads((EXAMPLES / f"{name}.json").read_text())["nodes"]}


def test_every_workflow_was_loaded(editor_run):
    assert set(editor_run.workflows) == set(NAMES) and len(NAMES) >= 3


@pytest.mark.parametrize("name", NAMES)
def test_every_node_type_is_registered(editor_run, name):
    seen = editor_run.workflows[name]["nodes"]
    assert sorted(n["id"] for n in seen) == sorted(file_nodes(name)), "the editor's graph lost or added nodes"
    unknown = [(n["id"], n["type"]) for n in seen if not n["registered"] or n["hasErrors"]]
    assert not unknown, f"node types the editor does not know: {unknown}"
    assert [n["type"] for n in sorted(seen, key=lambda n: n["id"])] == \
        [file_nodes(name)[i]["type"] for i in sorted(file_nodes(name))]


@pytest.mark.parametrize("name", NAMES)
def test_widget_values_and_links_are_kept_as_in_the_file(editor_run, name):
    expected = file_nodes(name)
    for node in editor_run.workflows[name]["nodes"]:
        want = expected[node["id"]]
        assert node["widgets_values"] == want["widgets_values"], \
            f"node {node['id']} ({node['type']}): editor {node['widgets_values']} != file {want['widgets_values']}"
        assert node["inputs"] == [{"name": i["name"], "link": i["link"]} for i in want["inputs"]], \
            f"node {node['id']} ({node['type']}): inputs or links changed on load"


@pytest.mark.parametrize("name", NAMES)
def test_editor_would_queue_exactly_the_api_twin(editor_run, name):
    twin = json.loads((EXAMPLES / "api" / f"{name}.json").read_text())
    prompt = editor_run.workflows[name]["prompt"]
    # a twin may leave optional widgets at their default; the editor always spells them out
    assert ui_tool.with_defaults(prompt, editor_run.object_info) == ui_tool.with_defaults(twin, editor_run.object_info)


@pytest.mark.parametrize("name", NAMES)
def test_loading_logs_no_console_error(editor_run, name):
    assert editor_run.workflows[name]["errors"] == []


def test_startup_errors_are_not_the_packs(editor_run):
    """A fresh profile without network logs a few errors of ComfyUI's own (no user.css, no release
    feed); none may come from this pack."""
    ours = [e for e in editor_run.result["startupErrors"] if any(m in e for m in PACK_MARKERS)]
    assert not ours, ours


def test_main_workflow_queued_from_the_editor_runs(editor_run):
    q = editor_run.result["queue"]
    log = editor_run.server.log()[-4000:]
    assert not q["nodeErrors"], f"the server rejected the queued graph: {q['nodeErrors']}\n{log}"
    assert sorted(q["swapped"]) == sorted(f"{t}.{w}" for t, ws in editor_run.swap.items() for w in ws), \
        "a widget to swap was not found in the editor"
    assert q.get("status", {}).get("status_str") == "success", f"{q.get('status')}\n{log}"
    assert q["errors"] == [], q["errors"]
    nodes = {n["type"]: str(n["id"]) for n in file_nodes(editor_run.queued).values()}
    outputs = q["outputs"]
    assert outputs[nodes["DTGenDatasetWriter"]]["text"], "the dataset writer reported nothing"
    previews = [nid for nid, n in file_nodes(editor_run.queued).items() if n["type"] == "PreviewImage"]
    shown = [str(p) for p in previews if str(p) in outputs]   # a rejected preview runs only if any were
    assert shown and all(outputs[p]["images"] for p in shown), "a preview (plot, rejected) is empty"
    manifest = editor_run.server.output_dir / editor_run.dataset / "manifest.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    assert len(lines) == editor_run.count and {r["pack"] for r in lines} == {"tableware"}


def test_training_template_queued_from_the_editor_trains_and_saves_a_lora(editor_run):
    """The LoRA training template, loaded as the template browser loads it, queues with only the
    model and size swapped: the photos are read, trained on and the LoRA is saved."""
    (run,) = [r for r in editor_run.result["alsoQueued"] if r["name"] == editor_run.trained]
    log = editor_run.server.log()[-4000:]
    assert not run["nodeErrors"], f"the server rejected the training graph: {run['nodeErrors']}\n{log}"
    assert sorted(run["swapped"]) == sorted(f"{t}.{w}" for t, ws in editor_run.train_swap.items() for w in ws)
    assert run.get("status", {}).get("status_str") == "success", f"{run.get('status')}\n{log}"
    assert run["errors"] == [], run["errors"]
    saved = sorted((editor_run.server.output_dir / "loras").glob("dtgen_tableware_lora_3_steps_*.safetensors"))
    assert len(saved) == 1, saved
    status = _shows_status(run)
    assert "real images in 2 classes" in status.get("DTGenFewShotImages", ""), status


def _shows_status(run: dict) -> dict:
    """The status texts of one editor run, checked to be in the page and not saved with the graph."""
    for text in run["statusText"].values():
        assert any(text in shown for shown in run["pageText"]), f"not on the page: {text[:80]}"
    assert run["savedWithStatus"] == [], "the status text leaked into saved widget values"
    return run["statusText"]


def test_dtgen_nodes_show_what_they_did_on_the_canvas(editor_run):
    """The pack's web extension gives each DTGen node a read-only text box after it ran; the text
    is in the page (not only in /history) and never saved as a widget value."""
    status = _shows_status(editor_run.result["queue"])
    assert "this run:" in status.get("DTGenDatasetWriter", ""), status
    assert f"{editor_run.count} item(s)" in status.get("DTGenPromptSampler", ""), status
    assert "kept" in status.get("DTGenClipFilter", ""), status


def test_one_queue_run_writes_and_finalizes_and_all_four_nodes_say_so(editor_run):
    run = editor_run.result["finalize"]
    assert not run["nodeErrors"] and run["status"]["status_str"] == "success", run
    status = _shows_status(run)
    assert "2 item(s)" in status["DTGenPromptSampler"] and "kept" in status["DTGenClipFilter"]
    assert "this run: " in status["DTGenDatasetWriter"] and "moved: " in status["DTGenDatasetFinalize"], status
    report = editor_run.server.output_dir / editor_run.finalized_dataset / "report" / "report.json"
    per_class = json.loads(report.read_text())["per_class"]
    assert sum(c["total"] for c in per_class.values()) == 2


def test_a_hand_built_graph_with_default_widgets_queued_eight_times_fills_every_class(editor_run):
    """Five DTGen/stock nodes wired by hand on a fresh canvas, every DTGen widget at its default,
    batch count 8: the seed widget randomizes on each queue, and the items still spread evenly."""
    run = editor_run.result["handBuilt"]
    assert not run["nodeErrors"], run["nodeErrors"]
    assert run["built"]["control"] == "randomize" and run["runs"] == ["success"] * 8, run
    dataset = run["built"]["writerDataset"]
    assert run["built"]["defaults"]["dataset_name"] == dataset
    lines = (editor_run.server.output_dir / dataset / "manifest.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    assert len(records) == 8 and len({(r["stream"], r["index"]) for r in records}) == 8
    per_class = {}
    for r in records:
        per_class[r["label"]] = per_class.get(r["label"], 0) + 1
    assert len(per_class) == 5 and max(per_class.values()) <= 2, per_class


def test_screenshots_show_the_graph(editor_run):
    shots = [editor_run.shots / "editor.png", *(editor_run.shots / f"{n}.png" for n in NAMES)]
    for path in shots:
        image = Image.open(path).convert("L")
        assert min(image.size) >= 300, f"{path.name}: {image.size}"
        lo, hi = image.getextrema()
        assert hi - lo > 100, f"{path.name} is blank"
    assert Image.open(shots[0]).size == (1920, 1080)
