"""Bad input is refused at queue time (POST /prompt -> node_errors), with a message that names it."""
from __future__ import annotations

import json

import pytest

from support.graphs import example_api


def node_errors(client, graph) -> dict:
    """ComfyUI's node_errors for a graph. (ComfyUI still runs the outputs that did validate, e.g.
    the previews, so the answer may carry a prompt_id too; the refused node never runs.)"""
    answer = client.queue(graph)
    errors = answer.get("node_errors", {})
    assert errors, f"ComfyUI accepted a graph it should have refused: {answer}"
    return errors


def messages(errors: dict, node: str) -> str:
    return json.dumps(errors.get(node, {}).get("errors", []))


def test_bad_inline_prompt_pack_names_the_yaml_path(client):
    graph = example_api("dtgen_sd35_lora")
    graph["1"]["inputs"]["inline_yaml"] = (
        "version: 1\nname: t\nclasses:\n  - label: cup\n    templates: ['a {nope} cup']\n")
    text = messages(node_errors(client, graph), "1")
    assert "nope" in text and "classes[0].templates[0]" in text and "<inline_yaml>" in text, text


def test_unknown_class_subset_is_refused(client):
    graph = example_api("dtgen_sd35_lora", classes="plate_clean, teapot_clean")
    assert "teapot_clean" in messages(node_errors(client, graph), "1")


@pytest.mark.parametrize("inputs, expected", [
    ({"weights": "ViT-B-32-not-there.safetensors"}, "ViT-B-32-not-there.safetensors"),
    ({"weights": "(download pretrained_tag into models/open_clip)", "pretrained_tag": "laion9b_nope"},
     "unknown pretrained tag 'laion9b_nope' for ViT-B-32"),
    ({"arch": "ViT-B-33"}, "ViT-B-33"),
    ({"precision": "fp16"}, "fp16 on the CPU"),
    ({"precision": "fp64"}, "unknown precision 'fp64'"),
], ids=["missing_weights_name_the_file", "download_entry_with_an_unknown_tag", "unknown_architecture",
        "fp16_on_the_cpu", "unknown_precision"])
def test_clip_loader_inputs_are_checked_at_queue_time(client, inputs, expected):
    graph = example_api("dtgen_sd35_lora")
    graph["9"]["inputs"].update(inputs)
    text = messages(node_errors(client, graph), "9")
    assert expected in text, text


def test_unsafe_dataset_name_is_refused_before_anything_runs(client, comfy_server):
    graph = example_api("dtgen_sd35_lora", dataset_name="../escape")
    text = messages(node_errors(client, graph), "11")
    assert "escape" in text and ".." in text, text
    assert not (comfy_server.output_dir.parent / "escape").exists()


def test_filter_threshold_settings_are_checked_at_queue_time(client):
    graph = example_api("dtgen_sd35_lora", method="percentile", keep_percent=0.0)
    text = messages(node_errors(client, graph), "10")
    assert "p=0 must be in (0, 100]" in text, text


def test_comfyui_still_checks_the_inputs_a_node_does_not_validate_itself(client):
    """validate_inputs names only the inputs it checks, so ComfyUI keeps checking the others
    (a ``**kwargs`` signature would switch its option and range checks off for the whole node)."""
    graph = example_api("dtgen_sd35_lora", text_side="sideways", batch_size=0)
    text = messages(node_errors(client, graph), "10")
    assert "sideways" in text and "batch_size" in text, text


def test_sampler_count_range_is_checked(client):
    """count is not named by the sampler's validate_inputs, so ComfyUI checks its range itself."""
    text = messages(node_errors(client, example_api("dtgen_sd35_lora", count=5000)), "1")
    assert "Value 5000 bigger than max of 4096" in text, text


def test_linked_widget_values_are_checked_at_execution_not_refused(client, comfy_server):
    """A seed from a primitive node is unknown at queue time: validation lets it through."""
    graph = example_api("dtgen_sd35_lora", dataset_name="linked_seed")
    graph["50"] = {"class_type": "PrimitiveInt", "inputs": {"value": 3}}
    graph["1"]["inputs"]["seed"] = ["50", 0]
    result = client.run(graph)
    assert result.error is None, result.error
    lines = (comfy_server.output_dir / "linked_seed" / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["metadata"]["base_seed"] == 3


def test_bad_combo_values_of_dtgen_nodes_are_refused_at_queue_time(client):
    """ComfyUI 0.3.64 does not check V3 combo values itself; the nodes do."""
    graph = example_api("dtgen_sd35_lora", image_format="tiff")
    assert "image_format 'tiff'" in messages(node_errors(client, graph), "11")


def test_copy_paste_at_the_schema_maxima_is_refused_with_its_memory_estimate(client):
    """size 4096, count 4096, 50 objects: about 14 TB (13,824 GiB) of float32 outputs; refused when queued, with the
    estimate and the limit (common/memory.py), before any cutout is read."""
    graph = example_api("dtgen_copy_paste", dataset_name="too_big", size=4096, count=4096, objects_max=50)
    node = next(k for k, v in graph.items() if v["class_type"] == "DTGenCopyPaste")
    text = messages(node_errors(client, graph), node)
    assert "DTGen Copy-Paste: 4096 item(s) of 4096x4096 need about 13824.0 GB" in text, text
    assert "the limit is 8 GB (MAX_OUTPUT_BYTES); lower count" in text, text
    graph[node]["inputs"]["count"] = 0   # the inputs named for the estimate keep their range checks
    assert "count=0 must be an integer 1 .. 4096" in messages(node_errors(client, graph), node)
