"""The CLIP filter with real photos on real ComfyUI (CPU, tiny SD3, random ViT-B-32): DTGen
Few-Shot Images feeds the filter's ``real_images`` and the writer's; every generated image gets a
real-anchored score beside its text score, decided on both; the real photos are stored once with
their embeddings (the same CLIP), and a second run reads them from the dataset. Without real photos
the node says the check was skipped."""
from __future__ import annotations

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
