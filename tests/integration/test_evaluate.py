"""DTGen Evaluate on real ComfyUI (CPU): one queue run writes a copy-paste dataset, finalizes it and
evaluates it on real test photos; the node shows its table, and ``python -m runner evaluate``
prints the same numbers for the same dataset and CLIP file. The sweep says how many photos chose
its setting and how many report it; ``apply_best`` moves nothing unless the held-out gain is above
its bootstrap interval; a test photo saved again as PNG (identical pixels) among the few-shot
images is refused by name (issue #27)."""
from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image
from support import fixtures
from support.graphs import example_api, run_ok
from support.pkg import ROOT


def _graph(dataset: str) -> dict:
    graph = example_api("dtgen_copy_paste", dataset_name=dataset, count=6)
    graph["7"] = {"class_type": "DTGenDatasetFinalize", "inputs": {
        "dataset_name": dataset, "redecide": False, "method": "mean_std", "k": 1.5, "keep_percent": 90.0,
        "fixed_threshold": 0.25, "min_count": 8, "dataset": ["4", 2]}}
    graph["8"] = {"class_type": "DTGenEvaluate", "inputs": {
        "dataset_name": dataset, "clip": ["2", 0], "test_folder": fixtures.REAL_SET, "sweep": True,
        "apply_best": False, "seed": 0, "dataset": ["7", 2]}}
    return graph


def _evaluate_only(dataset: str, **inputs) -> dict:
    graph = example_api("dtgen_copy_paste", dataset_name=dataset)
    graph = {"2": graph["2"], "8": {"class_type": "DTGenEvaluate", "inputs": {
        "dataset_name": dataset, "clip": ["2", 0], "test_folder": fixtures.REAL_SET, "sweep": True,
        "apply_best": True, "seed": 0, **inputs}}}
    return graph


def _files(ds) -> list[str]:
    return sorted(str(p.relative_to(ds)) for sub in ("images", "rejected") for p in (ds / sub).rglob("*") if p.is_file())


def test_evaluate_after_finalize_in_one_graph_and_the_cli_agrees(client, comfy_server, model_dirs):
    result = run_ok(client, _graph("evaluated"))
    shown = " ".join(result.outputs("8").get("text", []))
    assert "arm" in shown and "synthetic" in shown and "macro-F1" in shown, shown
    assert "best" in shown.lower(), shown
    # 3 photos per class: 1 chooses the setting, 2 report it
    assert ("photos: validation 2 photos (plate_clean 1, plate_heavily_dirty 1), held-out 4 photos (plate_clean 2, "
            "plate_heavily_dirty 2)") in shown, shown
    ds = comfy_server.output_dir / "evaluated"
    stored = json.loads((ds / "report" / "evaluation.json").read_text())
    assert set(stored["classes"]) == set(fixtures.REAL_LABELS)
    assert stored["sweep"]["chosen_on"] == "validation" and stored["sweep"]["split"]["held_out"] == {
        label: 2 for label in fixtures.REAL_LABELS}

    weights = model_dirs["open_clip"][0] / fixtures.CLIP_WEIGHTS
    test = model_dirs["dtgen_fewshot"][0] / fixtures.REAL_SET
    done = subprocess.run([sys.executable, "-m", "runner", "evaluate", str(ds), "--test", str(test),
                           "--clip-arch", fixtures.CLIP_ARCH, "--clip-weights", str(weights), "--sweep"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in shown.splitlines() if line.startswith("|") and "%" in line]
    assert rows, shown
    for row in rows:   # every arm's and setting's line of the node's table is in the CLI's output, numbers included
        assert row in done.stdout, f"{row!r} not in the CLI output:\n{done.stdout}"

    # apply_best on this dataset: 4 held-out photos cannot show a gain above the uncertainty, so the
    # node says why it did nothing and no image moves
    before = _files(ds)
    result = run_ok(client, _evaluate_only("evaluated"))
    shown = " ".join(result.outputs("8").get("text", []))
    report = json.loads((ds / "report" / "evaluation.json").read_text())
    assert report["best"]["apply"] is False, report["best"]
    assert f"apply_best: nothing done: {report['best']['apply_reason']}" in shown, shown
    assert _files(ds) == before


def test_a_test_photo_saved_again_as_png_among_the_fewshot_images_is_refused(client, comfy_server):
    run_ok(client, _graph("leaky"))
    ds = comfy_server.output_dir / "leaky"
    # the test set: the real photos as PNG, decoded pixels identical to the JPEGs the few-shot node reads
    resaved = comfy_server.base_dir / "input" / "resaved"
    for jpg in sorted((fixtures.real_photo_set() / fixtures.REAL_SET).rglob("*.jpg")):
        out = resaved / jpg.parent.name / (jpg.stem + ".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(jpg) as im:
            im.convert("RGB").save(out)
    graph = _evaluate_only("leaky", test_folder="input/resaved", apply_best=False,
                           fewshot_images=["10", 4])
    graph["9"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": fixtures.CHECKPOINT}}
    graph["10"] = {"class_type": "DTGenFewShotImages", "inputs": {
        "folder": fixtures.REAL_SET, "clip": ["9", 1], "size": 64, "fit": "crop", "pack": "none", "part": "all",
        "holdout": 0.0, "seed": 0}}
    before = (ds / "report" / "evaluation.json").read_bytes()
    result = client.run(graph)
    assert result.error is not None
    message = json.dumps(result.error)
    assert "6 test photo(s) are also few-shot training images (by pixels 6, by embedding 0)" in message, message
    assert "plate_clean_00.png = few-shot image" in message and "plate_clean_00.jpg (same decoded pixels)" in message
    assert (ds / "report" / "evaluation.json").read_bytes() == before      # nothing written
