"""What the editor shows around the CLIP filter, on real ComfyUI: an empty accepted / rejected
output feeds nothing (no placeholder frame that looks like one image), and the threshold widgets
offer exactly the ranges the validators accept."""
from __future__ import annotations

import pytest
from support.graphs import example_api, manifest, run_ok

from dtgen.nodes.curation.thresholds import WIDGET_RANGES

FILTER, PLOT_PREVIEW, REJECTED_PREVIEW, ACCEPTED_PREVIEW = "10", "12", "13", "50"


def _graph(dataset: str, fixed_threshold: float) -> dict:
    """The main template with a fixed threshold, and a PreviewImage on 'accepted' too ('rejected'
    and 'plot' have theirs in the template)."""
    graph = example_api("dtgen_sd35_lora", dataset_name=dataset, method="fixed", fixed_threshold=fixed_threshold,
                        classes="plate_clean,bowl_clean", count=2)
    assert graph[REJECTED_PREVIEW]["inputs"]["images"] == [FILTER, 2]
    assert graph[PLOT_PREVIEW]["inputs"]["images"] == [FILTER, 3]
    graph[ACCEPTED_PREVIEW] = {"class_type": "PreviewImage", "inputs": {"images": [FILTER, 1]}}
    return graph


# fixed -1.0: every cosine reaches it (all accepted); fixed 1.0: none reaches it (all rejected)
@pytest.mark.parametrize("threshold,empty,full,decision", [
    (-1.0, REJECTED_PREVIEW, ACCEPTED_PREVIEW, "accepted"),
    (1.0, ACCEPTED_PREVIEW, REJECTED_PREVIEW, "rejected"),
], ids=["nothing_rejected", "nothing_accepted"])
def test_an_empty_preview_output_blocks_its_preview_silently(client, comfy_server, threshold, empty, full, decision):
    dataset = f"feedback_{decision}"
    result = run_ok(client, _graph(dataset, threshold))                 # no execution_error
    assert not [e for e in result.events if e["type"] == "execution_error"]
    assert result.history["status"]["status_str"] == "success", result.history["status"]
    assert [r["decision"] for r in manifest(comfy_server.output_dir / dataset)] == [decision] * 2

    executed = result.executed_nodes()
    assert empty not in executed, "a preview fed by an empty output ran"
    assert not result.outputs(empty).get("images"), result.outputs(empty)
    assert full in executed and PLOT_PREVIEW in executed
    assert len(result.outputs(full)["images"]) == 2                    # the two images, no placeholder
    assert len(result.outputs(PLOT_PREVIEW)["images"]) == 1


@pytest.mark.parametrize("node", ["DTGenClipFilter", "DTGenDatasetFinalize"])
def test_served_threshold_widgets_have_the_validated_ranges(client, node):
    spec = client.get_json(f"/object_info/{node}")[node]["input"]["required"]
    names = list(spec)
    assert [n for n in names if n in WIDGET_RANGES] == list(WIDGET_RANGES)     # the widget order is kept
    for name, want in WIDGET_RANGES.items():
        opts = spec[name][1]
        assert {key: opts.get(key) for key in want} == want, (node, name, opts)


def test_the_smallest_keep_percent_the_widget_offers_is_accepted_at_queue_time(client, comfy_server):
    low = WIDGET_RANGES["keep_percent"]["min"]
    graph = example_api("dtgen_sd35_lora", dataset_name="feedback_p", method="percentile", keep_percent=low,
                        classes="plate_clean", count=1)
    run_ok(client, graph)   # a refusal at queue time raises QueueRejected with ComfyUI's answer
    assert [r["decision"] for r in manifest(comfy_server.output_dir / "feedback_p")] == ["accepted"]
