"""The DTGen graph end to end on real ComfyUI (CPU, tiny SD3 + LoRA, random ViT-B-32):
prompt sampler -> stock SD3 + LoRA sampling -> CLIP filter -> dataset writer."""
from __future__ import annotations

import json

from support.graphs import example_api, manifest, run_ok
from support.pkg import ROOT

TABLEWARE = {f"{k}_{lvl}" for k in ("plate", "bowl")
             for lvl in ("clean", "slightly_dirty", "moderately_dirty", "heavily_dirty")}


def test_batch_graph_writes_a_labelled_filtered_dataset(client, comfy_server):
    graph = example_api("dtgen_sd35_lora_batch", count=16, dataset_name="e2e_batch")
    result = run_ok(client, graph)
    ksampler_runs = [e for e in result.events if e["type"] == "progress" and e["data"]["node"] == "7"
                     and e["data"]["value"] == e["data"]["max"]]
    assert len(ksampler_runs) == 16, "count=16 should fan out 16 KSampler runs in one queue run"

    ds = comfy_server.output_dir / "e2e_batch"
    lines = manifest(ds)
    assert len(lines) == 16
    assert {r["label"] for r in lines} == TABLEWARE
    assert len({r["prompt"] for r in lines}) == 16
    assert all(r["score"] is not None and r["threshold"] is not None for r in lines)
    assert {r["method"] for r in lines} == {"mean_std"}
    accepted = [r for r in lines if r["decision"] == "accepted"]
    rejected = [r for r in lines if r["decision"] == "rejected"]
    assert accepted and len(accepted) + len(rejected) == 16
    for r in accepted:
        assert (ds / r["file"]).is_file() and r["file"].startswith("images/")
    for r in rejected:
        assert (ds / r["file"]).is_file() and r["file"].startswith("rejected/")
    # each image carries exactly the sampler's item: label, prompt and seed of its index
    from dtgen.nodes.prompting.pack import load_pack
    from dtgen.nodes.prompting.sampler import Sampler

    sampler = Sampler(load_pack(ROOT / "prompts" / "tableware.yaml"), "balanced", 0)
    for r in lines:
        item = sampler.item(r["index"])
        assert (r["label"], r["prompt"], r["seed"]) == (item.label, item.positive, item.seed)
    # sampler metadata and provenance reached the manifest
    assert all(r["pack"] == "tableware" and r["index"] in range(16) for r in lines)
    assert any(m["class_type"] == "LoraLoader" for m in lines[0]["models"].values())
    # the CLIP's precision and device that ran (the loader's default precision "auto" on a CPU)
    from dtgen.nodes.scoring.precision import resolve_precision

    assert {(r["extra"]["clip_precision"], r["extra"]["clip_device"]) for r in lines} == {
        (resolve_precision("auto", "cpu"), "cpu")}

    # the same inputs again: identical prompts and seeds, and nothing is duplicated
    run_ok(client, example_api("dtgen_sd35_lora_batch", count=16, dataset_name="e2e_batch_again"))
    again = manifest(comfy_server.output_dir / "e2e_batch_again")
    key = lambda r: (r["index"], r["label"], r["prompt"], r["seed"])  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, lines))


def test_single_item_runs_use_the_dataset_history(client, comfy_server):
    """One image per queue run (the HTTP-API pattern): the filter's population grows with the
    dataset, so decisions stop being provisional once a class has min_count scores."""
    for start in range(0, 6):
        run_ok(client, example_api("dtgen_sd35_lora", start_index=start, classes="plate_clean",
                                   dataset_name="e2e_single", min_count=4))
    lines = manifest(comfy_server.output_dir / "e2e_single")
    assert [r["index"] for r in lines] == list(range(6))
    assert [r["provisional"] for r in lines] == [True, True, True, False, False, False]


def test_finalize_node_redecides_splits_and_reports(client, comfy_server):
    run_ok(client, example_api("dtgen_sd35_lora_batch", count=16, dataset_name="e2e_finalize", k=3.0))
    ds = comfy_server.output_dir / "e2e_finalize"
    before = {r["id"]: r["decision"] for r in manifest(ds)}
    finalize = {"1": {"class_type": "DTGenDatasetFinalize", "inputs": {
        "dataset_name": "e2e_finalize", "redecide": True, "method": "percentile", "k": 1.5,
        "keep_percent": 50.0, "fixed_threshold": 0.25, "min_count": 2, "split": "0.5,0.25,0.25"}}}
    result = run_ok(client, finalize)
    after = {r["id"]: r for r in manifest(ds)}
    assert set(after) == set(before), "finalize lost or added images"
    # keep the top 50 % per class of 2 images: one accepted, one rejected per class
    per_class: dict[str, list[str]] = {}
    for r in after.values():
        per_class.setdefault(r["label"], []).append(r["decision"])
        assert (ds / r["file"]).is_file()
        assert r["file"].startswith("images/" if r["decision"] == "accepted" else "rejected/")
        assert r["method"] == "percentile"
    assert all(sorted(v) == ["accepted", "rejected"] for v in per_class.values()), per_class
    assert {r["split"] for r in after.values()} <= {"train", "val", "test"}
    assert (ds / "report" / "report.json").is_file() and (ds / "report" / "histogram.png").is_file()
    assert len(list((ds / "report").glob("contact_*.png"))) == 8
    assert result.outputs("1").get("images"), "finalize shows its plot as a preview"
    report = json.loads((ds / "report" / "report.json").read_text())
    assert sum(c["accepted"] for c in report["per_class"].values()) == 8


def test_sampler_resume_mode_fills_quotas_then_stops(client, comfy_server):
    """Queue the same graph again and again: the sampler asks the dataset which items are still
    missing, and once every class is full the run stops at the sampler without an error."""
    graph = example_api("dtgen_sd35_lora_batch", count=4, classes="plate_clean,bowl_clean",
                        method="fixed", fixed_threshold=-1.0)  # accept everything: quota math is exact
    for node in graph.values():
        if node["class_type"] in ("DTGenPromptSampler", "DTGenClipFilter", "DTGenDatasetWriter"):
            node["inputs"]["dataset_name"] = "e2e_resume"
    graph["1"]["inputs"]["quota_per_class"] = 3
    first = run_ok(client, graph)
    lines = manifest(comfy_server.output_dir / "e2e_resume")
    assert len(lines) == 4 and sorted(r["index"] for r in lines) == [0, 1, 2, 3]
    run_ok(client, graph)  # 2 more: one per class reaches 3
    lines = manifest(comfy_server.output_dir / "e2e_resume")
    assert sorted(r["index"] for r in lines) == [0, 1, 2, 3, 4, 5]
    counts = {lab: sum(r["label"] == lab for r in lines) for lab in ("plate_clean", "bowl_clean")}
    assert counts == {"plate_clean": 3, "bowl_clean": 3}
    last = run_ok(client, graph)  # everything full: nothing downstream runs, no error
    assert len(manifest(comfy_server.output_dir / "e2e_resume")) == 6
    assert [e for e in first.progress_events() if e["data"]["node"] == "7"], "KSampler progress expected"
    assert not [e for e in last.progress_events() if e["data"]["node"] == "7"], "KSampler ran for a full dataset"


def test_class_text_scoring_without_metadata_falls_back_to_a_photo_of_label(client, comfy_server):
    """The filter's default text side is the pack's class text, carried by the sampler's metadata;
    with that link missing it scores against "a photo of <label>" instead of failing mid-run."""
    graph = example_api("dtgen_sd35_lora_batch", count=2, dataset_name="e2e_no_metadata")
    del graph["10"]["inputs"]["metadata"]
    run_ok(client, graph)
    lines = manifest(comfy_server.output_dir / "e2e_no_metadata")
    assert len(lines) == 2 and all(isinstance(r["score"], float) for r in lines)
    assert all(r["extra"]["text_side"] == "class_text" for r in lines)
    # the fallback texts were encoded as class texts: every class of the run has a class score
    assert all(set(r["extra"]["class_scores"]) == {x["label"] for x in lines} for r in lines)
