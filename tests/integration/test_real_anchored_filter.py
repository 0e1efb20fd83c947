"""The CLIP filter with real photos on real ComfyUI (CPU, tiny SD3, random ViT-B-32): DTGen
Few-Shot Images feeds the filter's ``real_images`` and the writer's; every generated image gets a
real-anchored score beside its text score, decided on both; the real photos are stored once with
their embeddings (the same CLIP), and a second run reads them from the dataset. Without real photos
the node says the check was skipped."""
from __future__ import annotations

import json

from support import fixtures
from support.graphs import example_api, manifest, run_ok


def _graph(dataset: str, with_real: bool, count: int = 4) -> dict:
    graph = example_api("dtgen_sd35_lora_batch", count=count, dataset_name=dataset, classes="plate_clean,bowl_clean")
    graph["10"]["inputs"].update(decide_on="both", real_top_k=2)
    if with_real:
        graph["20"] = {"class_type": "DTGenFewShotImages", "inputs": {
            "folder": fixtures.REAL_SET, "clip": ["2", 1], "size": 64, "fit": "crop", "pack": "tableware",
            "part": "all", "holdout": 0.0, "seed": 0}}
        graph["10"]["inputs"]["real_images"] = ["20", 4]
        graph["11"]["inputs"]["real_images"] = ["20", 4]
    return graph


def _text(result, node: str) -> str:
    return "\n".join(result.outputs(node).get("text", []))


def test_filter_scores_against_the_real_photos_and_the_writer_keeps_their_embeddings(client, comfy_server):
    result = run_ok(client, _graph("real_anchored", True))
    ds = comfy_server.output_dir / "real_anchored"
    lines = manifest(ds)
    real = [r for r in lines if r["source"] == "real"]
    generated = [r for r in lines if r["source"] != "real"]
    photos = [p for p in (fixtures.real_photo_set() / fixtures.REAL_SET).rglob("*") if p.suffix in (".png", ".jpg")]
    assert len(generated) == 4 and len(real) == len(photos)   # part "all": every photo of the set, once
    model = generated[0]["extra"]["clip_model"]
    assert model.startswith("ViT-B-32 (")
    for r in real:   # stored once, with the embedding the filter made, and which CLIP made it
        assert r["embedding_dim"] == 512 and r["extra"]["clip_model"] == model
    labels_with_photos = {r["label"] for r in real}
    for r in generated:
        extra = r["extra"]
        if r["label"] in labels_with_photos:
            assert -1.0 <= extra["real_score"] <= 1.0 and extra["decided_on"] == "both"
            assert extra["real_n"] >= 1 and extra["real_threshold"] is not None
        else:
            assert "no real photos" in extra["real_skipped"] and extra["decided_on"] == "text"
        assert r["score"] is not None   # the text score stays beside it
    text = _text(result, "10")
    assert "real-anchored:" in text and "real-anchored threshold" in text, text

    # the next run reads the stored real photos (no few-shot node wired): same anchors
    again = run_ok(client, _graph("real_anchored", False))
    new = [r for r in manifest(ds)[len(lines):] if r["source"] != "real"]
    assert new and all("real_score" in r["extra"] or "real_skipped" in r["extra"] for r in new)
    assert "from the dataset's real records" in _text(again, "10")


def test_without_real_photos_the_filter_decides_on_text_and_says_why(client, comfy_server):
    result = run_ok(client, _graph("no_real", False))
    lines = manifest(comfy_server.output_dir / "no_real")
    assert lines and all("real_score" not in r["extra"] for r in lines)
    assert all(r["extra"]["real_skipped"].startswith("no real photos") for r in lines)
    assert {r["extra"]["decided_on"] for r in lines} == {"text"}
    assert "real-anchored check skipped: no real photos" in _text(result, "10")


def test_finalize_node_decides_on_the_real_score_and_reports_fidelity(client, comfy_server):
    run_ok(client, _graph("real_finalize", True, count=6))
    ds = comfy_server.output_dir / "real_finalize"
    finalize = {"1": {"class_type": "DTGenDatasetFinalize", "inputs": {
        "dataset_name": "real_finalize", "redecide": True, "method": "percentile", "k": 1.5, "keep_percent": 50.0,
        "fixed_threshold": 0.25, "min_count": 1, "decide_on": "real", "real_top_k": 1}}}
    result = run_ok(client, finalize)
    from dtgen.nodes.store.reader import live_records

    records = live_records(ds)
    with_photos = [r for r in records if r["source"] != "real" and "real_score" in r["extra"]]
    assert with_photos and {r["extra"]["decided_on"] for r in with_photos} == {"real"}
    report = json.loads((ds / "report" / "report.json").read_text())
    label = with_photos[0]["label"]
    assert report["fidelity"][label]["n_real"] >= 1 and (ds / "report" / report["fidelity_plots"][label]).is_file()
    text = "\n".join(result.outputs("1").get("text", []))
    assert f"{label}: precision" in text, text
    # a bad choice is refused at queue time, naming the input
    bad = json.loads(json.dumps(finalize))
    bad["1"]["inputs"]["decide_on"] = "vibes"
    answer = client.queue(bad)
    assert answer["_status"] == 400 and "decide_on 'vibes'" in json.dumps(answer), answer
