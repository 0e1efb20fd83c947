"""Workflow overrides, refusal messages, the planner, the manifest view and the command line."""
from __future__ import annotations

import json
import subprocess
import sys
import types

import numpy as np
import pytest
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.curation import quotas
from dtgen.nodes.store.writer import DatasetWriter
from dtgen.nodes.prompting.pack import PromptPackError
from dtgen.runner.api import describe_rejection, execution_error, writer_dataset_path
from dtgen.runner.cli import parse_quotas
from dtgen.runner.dataset_view import DatasetView
from dtgen.runner.packs import local_sampler
from dtgen.runner.planner import Job, Planner
from dtgen.runner.run import RunSettings, why_short
from dtgen.runner.workflow import Workflow, WorkflowError
from support.pkg import ROOT

EXAMPLE = ROOT / "example_workflows" / "api" / "dtgen_sd35_lora.json"


# ---------------------------------------------------------------------------------- workflow
def test_overrides_and_item_graph():
    wf = Workflow.load(EXAMPLE)
    wf.apply_set("KSampler.steps=4")
    wf.apply_set("6.width=64")
    wf.apply_set("1.classes=plate_clean")
    wf.set_models(ckpt="a.safetensors", lora="b.safetensors", clip_weights="c.safetensors")
    wf.set_dataset("mine")
    wf.set_writer_quota(5)
    g = wf.item_graph(40, 3)
    assert g["7"]["inputs"]["steps"] == 4 and g["6"]["inputs"]["width"] == 64
    assert (g["2"]["inputs"]["ckpt_name"], g["3"]["inputs"]["lora_name"], g["9"]["inputs"]["weights"]) == \
        ("a.safetensors", "b.safetensors", "c.safetensors")
    assert g["10"]["inputs"]["dataset_name"] == g["11"]["inputs"]["dataset_name"] == "mine"
    assert (g["1"]["inputs"]["start_index"], g["1"]["inputs"]["count"]) == (40, 3)
    assert g["11"]["inputs"]["quota_per_class"] == 5
    # the template's sampler resumes by itself in the editor; the client plans indices itself
    assert wf.graph["1"]["inputs"]["quota_per_class"] > 0 and g["1"]["inputs"]["quota_per_class"] == 0
    assert g["1"]["inputs"]["dataset_name"] == "mine"
    assert wf.graph["1"]["inputs"]["start_index"] == 0          # the template is not changed
    assert wf.sampler_inputs()["classes"] == "plate_clean"


@pytest.mark.parametrize("assignment, message", [
    ("steps=4", "expected node_id.input=value"),
    ("99.steps=4", "no node with id or class_type '99'"),
    ("4.text=hello", "is a link"),
])
def test_bad_overrides_name_the_problem(assignment, message):
    with pytest.raises(WorkflowError, match=message):
        Workflow.load(EXAMPLE).apply_set(assignment)


def test_workflow_shape_is_checked(tmp_path):
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(WorkflowError, match="not an API-format workflow"):
        Workflow.load(ui)
    graph = json.loads(EXAMPLE.read_text())
    del graph["11"]
    with pytest.raises(WorkflowError, match="exactly one DTGenDatasetWriter"):
        Workflow(graph, "g.json")
    with pytest.raises(WorkflowError, match="not found"):
        Workflow.load(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------- messages
def test_missing_model_is_named_with_its_folder():
    answer = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"},
              "node_errors": {"2": {"class_type": "CheckpointLoaderSimple", "errors": [{
                  "type": "value_not_in_list", "message": "Value not in list",
                  "details": "ckpt_name: 'sd35.safetensors' not in ['tiny.safetensors']",
                  "extra_info": {"input_name": "ckpt_name", "input_config": [["tiny.safetensors"], {}],
                                 "received_value": "sd35.safetensors"}}]},
                  "9": {"class_type": "DTGenClipLoader", "errors": [
                      {"type": "custom_validation_failed", "details": "arch - weights file 'x.pt' not found",
                       "extra_info": {"input_name": "arch"}},
                      {"type": "custom_validation_failed", "details": "weights - weights file 'x.pt' not found",
                       "extra_info": {"input_name": "weights"}}]}}}
    text = describe_rejection(answer)
    assert "node 2 (CheckpointLoaderSimple): model file 'sd35.safetensors' (ckpt_name)" in text
    assert "models/checkpoints" in text and "found: tiny.safetensors" in text
    assert text.count("weights file 'x.pt' not found") == 1          # repeated per input by ComfyUI
    assert "\n" not in text
    assert describe_rejection({"error": {"message": "no prompt", "details": "x"}}) == "no prompt: x"


def test_history_entries():
    ok = {"status": {"status_str": "success", "completed": True}, "outputs": {"11": {"text": ["/o/ds\nplate: 1"]}}}
    bad = {"status": {"status_str": "error", "messages": [["execution_error", {
        "node_id": "7", "node_type": "KSampler", "exception_type": "RuntimeError", "exception_message": "oom\n"}]]}}
    assert execution_error(ok) is None and writer_dataset_path(ok, "11") == "/o/ds"
    assert execution_error(bad) == "node 7 (KSampler): RuntimeError: oom"
    assert writer_dataset_path(bad, "11") is None


# ---------------------------------------------------------------------------------- planner
def labels_mod(n):
    return lambda i: f"c{i % n}"


def test_planner_never_gives_a_class_more_than_it_needs():
    p = Planner(labels_mod(3), targets={"c0": 2, "c1": 1})
    jobs = []
    while (job := p.next_job(set(), {}, _flight(jobs, labels_mod(3)))) is not None:
        jobs.append(job)
    assert [j.indices for j in jobs] == [(0,), (1,), (3,)]          # c2 has no target: never queued
    # index 3 was rejected (stored, not accepted): the next plan fills the gap, never reusing an index
    done, accepted = {0, 1, 3}, {"c0": 1, "c1": 1}
    job = p.next_job(done, accepted, {})
    assert job.indices == (6,)
    assert p.next_job(done, accepted, {"c0": 1}) is None
    assert p.complete({"c0": 2, "c1": 1}, done) and not p.complete(accepted, done)


def _flight(jobs, label_of):
    out = {}
    for j in jobs:
        for i in j.indices:
            out[label_of(i)] = out.get(label_of(i), 0) + 1
    return out


def test_planner_items_mode_blocks_retries_and_resume():
    p = Planner(labels_mod(2), items=7, start=10, per_prompt=3, retries=1)
    done = {11}                                                     # stored by an earlier run
    jobs = [p.next_job(done, {}, {}) for _ in range(3)]
    assert [j.indices for j in jobs] == [(10, 11, 12), (13, 14, 15), (16,)]
    assert p.next_job(done, {}, {}) is None and p.exhausted()
    assert p.errored(jobs[1]) is True                               # first error: back for a retry
    assert p.next_job(done, {}, {}) is jobs[1]
    assert p.errored(jobs[1]) is False and p.failed == {13, 14, 15}
    p.lost(jobs[2])                                                 # lost with a server: no retry used
    assert p.next_job(done, {}, {}) is jobs[2] and jobs[2].errors == 0
    p.finished(jobs[0]), p.finished(jobs[2])
    assert p.complete({}, done)


def test_planner_skips_adopted_and_stops_at_the_exhaustive_end():
    p = Planner(labels_mod(2), targets={"c0": 5, "c1": 5}, limit=4)
    p.adopt(Job((0, 1)))
    assert [p.next_job(set(), {}, {"c0": 1, "c1": 1}).indices for _ in range(2)] == [(2,), (3,)]
    assert p.next_job(set(), {}, {}) is None and p.exhausted()
    with pytest.raises(ValueError, match="either"):
        Planner(labels_mod(2), targets={"c0": 1}, items=3)


def test_planner_fills_a_reopened_class_from_its_earliest_unused_item_and_says_when_none_is_left():
    p = Planner(labels_mod(2), targets={"c0": 1, "c1": 2})
    assert p.next_job(set(), {}, {}).indices == (0,)
    assert p.next_job(set(), {}, {"c0": 1}).indices == (1,)
    assert p.next_job(set(), {}, {"c0": 1, "c1": 1}).indices == (3,)     # 2 (c0) is not wanted now
    # item 0 was rejected: c0 needs one again and its earliest unused item is 2, passed over before
    assert p.next_job({0, 1, 3}, {"c1": 1}, {}).indices == (2,)
    assert not p.exhausted()
    lone = Planner(lambda i: "c0", targets={"c0": 1, "never_sampled": 1})
    assert lone.next_job(set(), {}, {}).indices == (0,)
    assert lone.next_job(set(), {}, {"c0": 1}) is None and lone.exhausted()   # no endless scan
    cfg, sampler = RunSettings(server="", targets={"c0": 1, "never_sampled": 1}), types.SimpleNamespace(mode="balanced")
    assert why_short(cfg, lone, sampler, {"c0": 1}).startswith(
        "quota not reached for {'never_sampled': '0/1'}: the sampler offers no item of never_sampled among its next "
        "100000 items")


# ---------------------------------------------------------------------------------- dataset view
def make_items(indices):
    return [ScoredItem(image=np.full((4, 4, 3), i / 10, np.float32), label=("cat", "dog", "tea cup")[i % 3],
                       prompt=f"item {i}", seed=i, index=i, metadata={"pack_hash": "ph1"}, score=0.3,
                       accepted=i % 4 != 0) for i in indices]


def test_view_matches_quotas_and_reads_only_new_lines(tmp_path):
    ds = tmp_path / "ds"
    with DatasetWriter(ds) as w:
        w.write(make_items(range(6)))
    view = DatasetView(ds, pack_hash="ph1").refresh()
    assert view.counts() == quotas.counts(ds)
    assert view.done_indices() == quotas.done_indices(ds, "ph1")
    with DatasetWriter(ds) as w:
        w.write(make_items(range(6, 9)))
    view.refresh()
    assert view.counts() == quotas.counts(ds) and view.done_indices() == set(range(9))
    assert DatasetView(ds, pack_hash="other").refresh().done_indices() == set()


# ---------------------------------------------------------------------------------- packs, cli
def test_local_sampler_labels_match_the_node_rule():
    s = local_sampler({"pack": "tableware", "mode": "balanced", "seed": 3, "classes": "bowl_clean, plate_clean"})
    assert s.labels == ("plate_clean", "bowl_clean")                # pack order, as the node builds it
    assert [s.label_of(i) for i in range(3)] == ["plate_clean", "bowl_clean", "plate_clean"]
    with pytest.raises(PromptPackError, match="--pack-dir"):
        local_sampler({"pack": "nope", "mode": "balanced", "seed": 0})


def test_local_sampler_finds_packs_in_pack_dirs(tmp_path):
    (tmp_path / "mine.yaml").write_text((ROOT / "prompts" / "fruits.yaml").read_text())
    s = local_sampler({"pack": "mine", "mode": "balanced", "seed": 0}, [tmp_path])
    assert s.labels == local_sampler({"pack": "fruits", "mode": "balanced", "seed": 0}).labels


def test_parse_quotas():
    labels = ("a", "b", "c")
    assert parse_quotas(["2"], labels) == {"a": 2, "b": 2, "c": 2}
    assert parse_quotas(["b=5", "1"], labels) == {"b": 5, "a": 1, "c": 1}
    assert parse_quotas(["a=3"], labels) == {"a": 3}
    with pytest.raises(ValueError, match="'z' is not sampled"):
        parse_quotas(["z=1"], labels)
    with pytest.raises(ValueError, match="expected N or label=N"):
        parse_quotas(["lots"], labels)


@pytest.mark.parametrize("how", ["module", "path"])
def test_command_runs_from_the_checkout_and_by_path(how, tmp_path):
    cmd = [sys.executable, "-m", "runner"] if how == "module" else [sys.executable, str(ROOT / "runner")]
    cwd = ROOT if how == "module" else tmp_path
    done = subprocess.run([*cmd, "queue", str(EXAMPLE), "--items", "1", "--set", "1.pack=nope"],
                          cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("error: no prompt pack named 'nope'") and done.stderr.count("\n") == 1
    done = subprocess.run([*cmd, "queue", "--help"], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "--quota" in done.stdout and "--server" in done.stdout
