"""From a few real photos to a LoRA and a dataset, on real ComfyUI (CPU, tiny random SD3):

- the training template's API twin trains a few steps on a real photo set and saves a LoRA where
  LoraLoader lists it (``loras`` mapped to ``output/loras``, as the README documents);
- the generation template loads that LoRA with the stock LoraLoader: no ``lora key not loaded``,
  and its images differ from strength 0;
- the train-then-generate template does both in one queue run and the real photos join the
  dataset as ``source: real``, once, outside the quota;
- bad real image sets are refused with the file or folder named, and nothing is written.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support import fixtures
from support.graphs import example_api, manifest, run_ok
from .conftest import start_training_server
from support.comfy_server import ComfyClient

TRAINED_PREFIX = "dtgen_tableware_lora"


@pytest.fixture(scope="module")
def server(comfyui_path, model_dirs, tmp_path_factory):
    srv = start_training_server(comfyui_path, tmp_path_factory.mktemp("fewshot"), model_dirs)
    try:
        yield srv
    finally:
        srv.stop()


def _train(api, server) -> str:
    """Run the training template; the name LoraLoader lists the new LoRA under."""
    before = set((server.output_dir / "loras").glob("*.safetensors"))
    result = run_ok(api, example_api("dtgen_sd35_train_lora"))
    new = sorted(set((server.output_dir / "loras").glob("*.safetensors")) - before)
    assert len(new) == 1, f"expected one new LoRA in output/loras, found {new}"
    text = " ".join(result.outputs("2").get("text", []))
    assert "4 real images in 2 classes" in text and "from the prompt pack" in text, text   # 3 per class, 0.2 held out
    return new[0].name


@pytest.fixture(scope="module")
def trained(server):
    c = ComfyClient(server.url)
    try:
        return _train(c, server)
    finally:
        c.close()


def test_training_template_writes_a_lora_that_loraloader_lists(api, server, trained):
    assert trained.startswith(f"{TRAINED_PREFIX}_3_steps_"), trained
    listed = api.get_json("/object_info/LoraLoader")["LoraLoader"]["input"]["required"]["lora_name"][0]
    assert trained in listed, listed
    from safetensors.numpy import load_file

    tensors = load_file(server.output_dir / "loras" / trained)
    ups = [k for k in tensors if k.endswith("lora_up.weight")]
    assert ups and any(np.abs(tensors[k]).max() > 0 for k in ups), "training left every lora_up at zero"
    assert sorted(server.base_dir.rglob("temp/dtgen_tableware_loss*.png")), "no loss graph in the temp folder"


def _generated(api, server, dataset: str, lora: str, strength: float) -> np.ndarray:
    graph = example_api("dtgen_sd35_lora", dataset_name=dataset, count=1)
    loader = next(n for n in graph.values() if n["class_type"] == "LoraLoader")
    loader["inputs"].update(lora_name=lora, strength_model=strength, strength_clip=strength)
    run_ok(api, graph)
    (rec,) = manifest(server.output_dir / dataset)
    return np.asarray(Image.open(server.output_dir / dataset / rec["file"]).convert("RGB"), dtype=np.int16)


def test_generation_template_applies_the_trained_lora(api, server, trained):
    on = _generated(api, server, "lora_on", trained, 1.0)
    off = _generated(api, server, "lora_off", trained, 0.0)
    assert on.shape == off.shape == (128, 128, 3)
    assert np.abs(on - off).mean() > 0.5, "the trained LoRA left the image unchanged"
    not_loaded = [l for l in server.log().splitlines() if "lora key not loaded" in l]
    assert not not_loaded, not_loaded[:5]


def test_train_then_generate_in_one_queue_run_adds_the_real_photos_once(api, server):
    graph = example_api("dtgen_sd35_train_generate", dataset_name="trained_run", count=2)
    run_ok(api, graph)
    dataset = server.output_dir / "trained_run"
    records = manifest(dataset)
    real = [r for r in records if r["source"] == "real"]
    generated = [r for r in records if r["source"] == "generated"]
    assert len(real) == 4 and len(generated) == 2, [(r["source"], r["label"]) for r in records]
    assert all(r["decision"] == "accepted" and r["reason"] == "real" and r["score"] is None for r in real)
    # the template wires the photos into the filter too: stored with the filter's embedding and its CLIP,
    # and every generated image carries its real-anchored score (or why not)
    assert all(r["embedding_dim"] and r["extra"]["clip_model"] == generated[0]["extra"]["clip_model"] for r in real)
    assert all("real_score" in r["extra"] or "real_skipped" in r["extra"] for r in generated)
    assert {r["label"] for r in real} == set(fixtures.REAL_LABELS)
    assert any(r["prompt"] == "dtgtableware, a white plate, top-down" for r in real) or \
        all(r["prompt"].startswith("dtgtableware, ") for r in real)
    for r in real:
        assert (dataset / r["file"]).is_file() and r["file"].startswith(f"images/{r['label']}/real_")
    rows = [json.loads(l) for l in (dataset / "images" / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["source"] for r in rows if r["source"] == "real") == ["real"] * 4

    run_ok(api, graph)   # queued again: the photos are not stored twice
    again = manifest(dataset)
    assert sum(r["source"] == "real" for r in again) == 4
    from dtgen.nodes.store.reader import class_counts, live_records

    counts = class_counts(live_records(dataset))
    assert sum(c.get("real", 0) for c in counts.values()) == 4
    assert sum(c["accepted"] + c["rejected"] for c in counts.values()) == 4   # generated only: 2 runs x 2


def _set(server, name: str) -> Path:
    return server.base_dir / "input" / name


def _queue_error(api, graph) -> str:
    answer = api.queue(graph)
    assert answer["_status"] == 400, answer
    return json.dumps(answer)


def test_unknown_set_and_label_outside_the_pack_are_refused_at_queue_time(api, server):
    graph = example_api("dtgen_sd35_train_lora")
    graph["2"]["inputs"]["folder"] = "../../etc"
    text = _queue_error(api, graph)
    assert "no real image set named '../../etc'" in text and fixtures.REAL_SET in text, text

    fixtures.real_photos(_set(server, "wrong_labels"), per_class=1, caption=None)
    (_set(server, "wrong_labels") / "plate_clean").rename(_set(server, "wrong_labels") / "teapot")
    graph["2"]["inputs"]["folder"] = "input/wrong_labels"
    text = _queue_error(api, graph)
    assert "label 'teapot' is not a class of prompt pack" in text, text


def test_a_corrupt_photo_fails_the_run_naming_the_file_and_writes_nothing(api, server):
    folder = fixtures.real_photos(_set(server, "corrupt"), per_class=2, caption=None)
    bad = folder / "plate_clean" / "plate_clean_01.jpg"
    bad.write_bytes(bad.read_bytes()[:300])   # truncated JPEG
    graph = example_api("dtgen_sd35_train_generate", dataset_name="corrupt_run", count=1)
    graph["2"]["inputs"]["folder"] = "input/corrupt"
    before = set((server.output_dir / "loras").glob("*"))
    result = api.run(graph)
    assert result.error is not None
    message = json.dumps(result.error)
    assert "plate_clean_01.jpg" in message and "truncated or damaged" in message, message
    assert set((server.output_dir / "loras").glob("*")) == before
    assert not (server.output_dir / "corrupt_run" / "manifest.jsonl").exists()
