"""A graph wired by hand with every DTGen widget at its default, queued again and again from the
editor (whose seed widget randomizes on every queue): the items spread over the classes."""
from __future__ import annotations

import random
import shutil
from collections import Counter

from support.graphs import example_api, manifest, run_ok

DTGEN = ("DTGenPromptSampler", "DTGenClipFilter", "DTGenDatasetWriter")


def _defaults(object_info: dict, node: str) -> dict:
    spec = object_info[node]["input"]
    return {name: cfg[1]["default"] for group in ("required", "optional") for name, cfg in spec.get(group, {}).items()
            if len(cfg) > 1 and isinstance(cfg[1], dict) and "default" in cfg[1]}


def test_queueing_a_default_graph_eight_times_fills_every_class(client, comfy_server):
    object_info = client.get_json("/object_info")
    graph = example_api("dtgen_sd35_fruits")
    for node in graph.values():
        if node["class_type"] in DTGEN:                       # back to what a fresh node shows
            node["inputs"].update(_defaults(object_info, node["class_type"]))
    sampler = graph["1"]["inputs"]
    sampler["pack"] = "fruits"
    dataset = graph["11"]["inputs"]["dataset_name"]
    assert sampler["dataset_name"] == dataset == "dtgen_dataset" and sampler["quota_per_class"] > 0
    shutil.rmtree(comfy_server.output_dir / dataset, ignore_errors=True)
    rng = random.Random(4242)
    for _ in range(8):
        sampler["seed"] = rng.randrange(2 ** 53)              # the frontend's "randomize"
        run_ok(client, graph)
    records = manifest(comfy_server.output_dir / dataset)
    assert len(records) == 8 and len({(r["stream"], r["index"]) for r in records}) == 8
    per_class = Counter(r["label"] for r in records)
    assert len(per_class) == 5 and max(per_class.values()) <= 2, per_class
