"""DTGen Evaluate on real ComfyUI (CPU): one queue run writes a copy-paste dataset, finalizes it and
evaluates it on real test photos; the node shows its table, and ``python -m runner evaluate``
prints the same numbers for the same dataset and CLIP file."""
from __future__ import annotations

import json
import subprocess
import sys

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


def test_evaluate_after_finalize_in_one_graph_and_the_cli_agrees(client, comfy_server, model_dirs):
    result = run_ok(client, _graph("evaluated"))
    shown = " ".join(result.outputs("8").get("text", []))
    assert "arm" in shown and "synthetic" in shown and "macro-F1" in shown, shown
    assert "best" in shown.lower(), shown
    ds = comfy_server.output_dir / "evaluated"
    stored = json.loads((ds / "report" / "evaluation.json").read_text())
    assert set(stored["classes"]) == set(fixtures.REAL_LABELS)

    weights = model_dirs["open_clip"][0] / fixtures.CLIP_WEIGHTS
    test = model_dirs["dtgen_fewshot"][0] / fixtures.REAL_SET
    done = subprocess.run([sys.executable, "-m", "runner", "evaluate", str(ds), "--test", str(test),
                           "--clip-arch", fixtures.CLIP_ARCH, "--clip-weights", str(weights), "--sweep"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in shown.splitlines() if line.startswith("|") and "%" in line]
    assert rows, shown
    for row in rows:   # every arm's line of the node's table is in the CLI's output, numbers included
        assert row in done.stdout, f"{row!r} not in the CLI output:\n{done.stdout}"
