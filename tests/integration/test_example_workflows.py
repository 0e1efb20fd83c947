"""The example workflows as ComfyUI serves and validates them, and the locale file in /i18n.

- the template browser's routes list and serve this pack's UI-format workflows and thumbnails;
- every API twin passes ComfyUI's own validation and runs (model names swapped for the fixtures);
- every UI workflow is consistent in itself and converts back to its API twin;
- the generated files (UI workflows, locales/en/nodeDefs.json) are in step with the node schemas.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
import urllib.request

import pytest

from support.comfy_server import PACK_NAME, ComfyClient
from support.graphs import example_api
from support.pkg import ROOT

EXAMPLES = ROOT / "example_workflows"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.json"))
API_NAMES = sorted(p.stem for p in (EXAMPLES / "api").glob("*.json"))


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"dtgen_tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ui_tool = load_tool("make_ui_workflows")
locale_tool = load_tool("make_locales")


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return ComfyClient(comfy_server.url).get_json("/object_info")


def fetch(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read(), r.headers.get("Content-Type", "")


def test_every_api_twin_has_a_ui_workflow_and_a_thumbnail():
    assert NAMES == API_NAMES and {"dtgen_sd35_lora", "dtgen_sd35_fruits", "dtgen_sd35_lora_batch",
                                   "dtgen_sd35_train_lora", "dtgen_sd35_train_generate", "dtgen_copy_paste",
                                   "dtgen_hybrid_copy_paste"} <= set(NAMES)
    missing = [n for n in NAMES if not (EXAMPLES / f"{n}.jpg").is_file()]
    assert not missing, f"no thumbnail for {missing}"


def test_template_browser_lists_the_packs_workflows(client):
    listed = client.get_json("/workflow_templates")
    assert sorted(listed.get(PACK_NAME, [])) == NAMES, listed  # api/ twins are not templates


@pytest.mark.parametrize("name", NAMES)
def test_template_and_thumbnail_are_served(client, name):
    body, _ = fetch(f"{client.url}/api/workflow_templates/{PACK_NAME}/{name}.json")
    assert json.loads(body) == json.loads((EXAMPLES / f"{name}.json").read_text())
    image, kind = fetch(f"{client.url}/api/workflow_templates/{PACK_NAME}/{name}.jpg")
    assert kind == "image/jpeg" and image[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize("name", API_NAMES)
def test_api_twin_passes_comfyui_validation_and_runs(client, name):
    count = 2 if "batch" in name else 1  # keep the batch twin's fan-out, small
    graph = example_api(name, count=count, dataset_name=f"validate_{name}")
    answer = client.queue(graph)
    assert answer["_status"] == 200 and "prompt_id" in answer and not answer.get("node_errors"), \
        json.dumps(answer, indent=1)[:4000]
    status = wait_for_history(client, answer["prompt_id"]).get("status", {})
    assert status.get("status_str") == "success", json.dumps(status, indent=1)[:4000]


def wait_for_history(client, prompt_id: str, timeout: float = 600.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        entry = client.history(prompt_id)
        if entry.get("status", {}).get("completed") is not None and entry["status"].get("status_str"):
            return entry
        time.sleep(0.3)
    raise TimeoutError(f"prompt {prompt_id} not finished after {timeout}s")


def check_links(ui: dict) -> list[str]:
    """Every link agrees with the input and output that hold it (ids, slots, types)."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    problems = []
    for link_id, src, out, dst, slot, typ in ui["links"]:
        target = nodes[dst]["inputs"][slot]
        output = nodes[src]["outputs"][out]
        if target["link"] != link_id:
            problems.append(f"link {link_id}: node {dst} input {slot} holds link {target['link']}")
        if link_id not in output["links"]:
            problems.append(f"link {link_id}: not listed on node {src} output {out}")
        if typ != output["type"] or target["type"] not in (typ, "*"):
            problems.append(f"link {link_id}: type {typ} vs output {output['type']} / input {target['type']}")
    held = sorted(i["link"] for n in ui["nodes"] for i in n.get("inputs", []) if i["link"] is not None)
    if held != sorted(link[0] for link in ui["links"]):
        problems.append("inputs hold links that are not in 'links' (or the reverse)")
    if ui["last_link_id"] != max((link[0] for link in ui["links"]), default=0):
        problems.append("last_link_id is not the highest link id")
    if ui["last_node_id"] != max(n["id"] for n in ui["nodes"]):
        problems.append("last_node_id is not the highest node id")
    return problems


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_converts_back_to_its_api_twin(object_info, name):
    ui = json.loads((EXAMPLES / f"{name}.json").read_text())
    twin = json.loads((EXAMPLES / "api" / f"{name}.json").read_text())
    assert not check_links(ui), check_links(ui)
    back = ui_tool.with_defaults(ui_tool.ui_to_api(ui, object_info), object_info)
    twin = ui_tool.with_defaults(twin, object_info)  # a twin may leave optional widgets at their default
    assert {k: v["class_type"] for k, v in back.items()} == {k: v["class_type"] for k, v in twin.items()}
    for nid, node in twin.items():
        assert back[nid]["inputs"] == node["inputs"], f"node {nid} ({node['class_type']})"
    notes = [n for n in ui["nodes"] if n["type"] == "MarkdownNote"]
    text = " ".join(n["widgets_values"][0] for n in notes)
    kinds = {n["class_type"] for n in twin.values()}
    for folder in ("models/checkpoints", "TripleCLIPLoader", "clip_l", "clip_g", "t5xxl"):
        assert folder in text, f"the notes do not mention {folder}"
    if "DTGenCopyPaste" in kinds:
        for words in ("models/dtgen_cutouts", "models/dtgen_backgrounds", "_mask.png", "COCO", "YOLO"):
            assert words in text, f"the notes do not mention {words}"
    assert ("models/open_clip" in text) == ("DTGenClipLoader" in kinds)
    if "SaveLoRANode" in kinds:   # training: where the photos go, where the LoRA lands, how LoraLoader sees it
        for words in ("models/dtgen_fewshot", "output/loras", "extra_model_paths.yaml", "bf16", "rank"):
            assert words in text, f"the notes do not mention {words}"
    elif "DTGenCopyPaste" not in kinds:
        assert ("models/loras" in text) == ("LoraLoader" in kinds)


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_is_what_the_converter_makes_now(object_info, name):
    """Stale files fail here: regenerate with tools/make_ui_workflows.py --url <server>."""
    assert ui_tool.build(name, object_info) == json.loads((EXAMPLES / f"{name}.json").read_text())


def test_converter_rejects_an_unknown_node_and_a_wrong_widget_count(object_info):
    with pytest.raises(ui_tool.WorkflowConvertError, match="NoSuchNode"):
        ui_tool.api_to_ui({"1": {"class_type": "NoSuchNode", "inputs": {}}}, object_info)
    ui = json.loads((EXAMPLES / "dtgen_sd35_lora.json").read_text())
    ksampler = next(n for n in ui["nodes"] if n["type"] == "KSampler")
    ksampler["widgets_values"].pop(1)  # drop the seed's control_after_generate value
    with pytest.raises(ui_tool.WorkflowConvertError, match=r"KSampler\): 6 widget values"):
        ui_tool.ui_to_api(ui, object_info)


def test_i18n_serves_the_node_locale(client, object_info):
    committed = json.loads((ROOT / "locales" / "en" / "nodeDefs.json").read_text())
    assert committed == locale_tool.node_defs(object_info), "stale: run tools/make_locales.py --url <server>"
    served = client.get_json("/i18n").get("en", {}).get("nodeDefs", {})
    ours = {k for k in object_info if k.startswith("DTGen")}
    assert ours and ours <= set(served), f"missing from /i18n: {ours - set(served)}"
    for name in ours:
        assert served[name] == committed[name]
        assert served[name]["display_name"] == object_info[name]["display_name"]
        assert all(entry.get("tooltip") for entry in served[name]["inputs"].values()), name


def test_the_template_browser_names_the_pack_category(client):
    """Frontend 1.27 titles a custom template card with its file name (it reads nothing else), but
    looks the category up in /i18n: the pack's locales/en/main.json names it."""
    category = client.get_json("/i18n").get("en", {}).get("templateWorkflows", {}).get("category", {})
    assert category.get("dtgen") == "DTGen — few-shot synthetic datasets", category
