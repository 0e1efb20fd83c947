"""Bad input is refused at queue time (POST /prompt -> node_errors), with a message that names it."""
from __future__ import annotations

import json

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


def test_missing_clip_weights_name_the_folder(client):
    graph = example_api("dtgen_sd35_lora")
    graph["9"]["inputs"]["weights"] = "ViT-B-32-not-there.safetensors"
    text = messages(node_errors(client, graph), "9")
    assert "ViT-B-32-not-there.safetensors" in text, text


def test_download_entry_with_an_unknown_tag_is_refused(client):
    graph = example_api("dtgen_sd35_lora")
    graph["9"]["inputs"]["weights"] = "(download pretrained_tag into models/open_clip)"
    graph["9"]["inputs"]["pretrained_tag"] = "laion9b_nope"
    text = messages(node_errors(client, graph), "9")
    assert "unknown pretrained tag 'laion9b_nope' for ViT-B-32" in text, text


def test_unknown_clip_architecture_is_refused(client):
    graph = example_api("dtgen_sd35_lora")
    graph["9"]["inputs"]["arch"] = "ViT-B-33"
    assert "ViT-B-33" in messages(node_errors(client, graph), "9")


def test_unsafe_dataset_name_is_refused_before_anything_runs(client, comfy_server):
    graph = example_api("dtgen_sd35_lora", dataset_name="../escape")
    text = messages(node_errors(client, graph), "11")
    assert "escape" in text and ".." in text, text
    assert not (comfy_server.output_dir.parent / "escape").exists()


def test_filter_threshold_settings_are_checked_at_queue_time(client):
    graph = example_api("dtgen_sd35_lora", method="percentile", keep_percent=0.0)
    text = messages(node_errors(client, graph), "10")
    assert "p=0 must be in (0, 100]" in text, text
