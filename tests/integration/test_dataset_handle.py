"""One dataset handle: DTGen Dataset names the dataset once for the sampler, the filter, the writer
and Finalize; Finalize wired to the writer's dataset output writes and finalizes in one queue run."""
from __future__ import annotations

import json

from support.graphs import example_api, manifest, run_ok

HANDLE, FINALIZE = "50", "51"


def test_the_dataset_named_once_reaches_all_four_nodes(client, comfy_server):
    graph = example_api("dtgen_sd35_lora", count=4, classes="plate_clean,bowl_clean", quota_per_class=2,
                        dataset_name="typed_but_unused")
    graph[HANDLE] = {"class_type": "DTGenDataset", "inputs": {"dataset_name": "handle_ds"}}
    for node in ("1", "10", "11"):                                   # sampler, filter, writer
        graph[node]["inputs"]["dataset"] = [HANDLE, 0]
    graph[FINALIZE] = {"class_type": "DTGenDatasetFinalize", "inputs": {
        "dataset_name": "dtgen_dataset_not_there", "redecide": False, "method": "mean_std", "k": 1.5,
        "keep_percent": 90.0, "fixed_threshold": 0.25, "min_count": 8, "split": "0.5,0.5",
        "dataset": ["11", 2]}}                                       # after the writer
    result = run_ok(client, graph)
    out = comfy_server.output_dir
    records = manifest(out / "handle_ds")
    assert len(records) == 4 and {r["label"] for r in records} == {"plate_clean", "bowl_clean"}
    assert not (out / "typed_but_unused").exists() and not (out / "dtgen_dataset_not_there").exists()
    report = json.loads((out / "handle_ds" / "report" / "report.json").read_text())
    assert sum(c["total"] for c in report["per_class"].values()) == 4        # finalized what was written
    assert FINALIZE in result.executed_nodes()
    text = result.outputs(FINALIZE)["text"][0]
    assert "moved: 0 to accepted, 0 to rejected" in text and "split (accepted)" in text
    assert "kept" in result.outputs("10")["text"][0]                         # the filter's text
    assert "4 item(s) (resume mode: handle_ds, 2 per class)" in result.outputs("1")["text"][0]

    # queued again: the handle's dataset changed, so the sampler plans the next items
    again = run_ok(client, graph)
    assert len(manifest(out / "handle_ds")) > 4 or "every class" in again.outputs("1")["text"][0]
