"""The queue client on graphs with a copy-paste branch (fake ComfyUI, real writer and claims):
``--mix`` splits, each source counted on its own, the branch queued alone or left out once its
source is full, copy-paste-only graphs, and the refusals of ``--mix``."""
from __future__ import annotations

import copy
import io
import json
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.store import manifest
from dtgen.nodes.store.writer import DatasetWriter
from dtgen.runner.cli import main, mix_arg, print_summary, split_mix
from dtgen.runner.dataset_view import DatasetView
from dtgen.runner.progress import Progress, status_line
from dtgen.runner.scheduler import QueueRun, RunResult, RunSettings
from dtgen.runner.workflow import Workflow, WorkflowError
from support.pkg import ROOT

API = ROOT / "example_workflows" / "api"
HYBRID, COPY_PASTE, SD_ONLY = API / "dtgen_hybrid_copy_paste.json", API / "dtgen_copy_paste.json", API / "dtgen_sd35_lora.json"
CLASSES = "1.classes=plate_clean,plate_heavily_dirty"   # the fake cutout set's two classes
SD_BRANCH = {str(i) for i in range(1, 14)}               # sampler 1 ... filter 10, writer 11, previews 12, 13
CP_BRANCH = {"14", "15"}


def queue(capsys, workflow, *args):
    """(exit code, stdout, stderr) of ``python -m runner queue workflow args...``."""
    try:
        code = main(["queue", str(workflow), *map(str, args)])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def accepted(ds) -> Counter:
    live = manifest.live(manifest.read(ds).records).values()
    return Counter((r["source"], r["label"]) for r in live if r["decision"] == "accepted")


def stored_twice(ds) -> list:
    keys = [(r.get("stream"), r["index"]) for r in manifest.read(ds).records]
    return [k for k, n in Counter(keys).items() if n > 1]


def per_source(sd, cp, labels=("plate_clean", "plate_heavily_dirty")) -> Counter:
    out = Counter({("generated", label): sd for label in labels})
    out.update({("copy_paste", label): cp for label in labels})
    return +out


# ---------------------------------------------------------------------------------- --mix
def test_mix_splits_the_quota_and_each_source_fills_its_own(capsys, fakes, tmp_path):
    """Copy-paste images never fill SD targets (and the reverse): 2 + 2 per class, SD rejections
    replaced; one prompt carries both branches while both want images."""
    fake = fakes(reject=lambda i: i % 4 == 3)
    code, out, err = queue(capsys, HYBRID, "--quota", 4, "--mix", "sd:1,copy_paste:1", "--set", CLASSES,
                           "--server", fake.url, "--dataset", "hy")
    assert code == 0, err
    ds = tmp_path / "out" / "hy"
    assert accepted(ds) == per_source(2, 2)
    assert not stored_twice(ds) and len(fake.executed) == len(set(fake.executed))
    assert SD_BRANCH | CP_BRANCH in fake.graphs                       # both branches in one prompt
    last = err.strip().splitlines()[-1]
    assert "8/8 accepted" in last
    assert "sd: plate_clean 2/2 plate_heavily_dirty 2/2 | copy_paste: plate_clean 2/2 plate_heavily_dirty 2/2" in last
    lines = out.splitlines()
    assert lines[0] == f"dataset: {ds}"
    assert lines[1] == "  sd (source generated):" and lines[4] == "  copy_paste:"
    assert lines[2].split()[:2] == ["plate_clean", "2"] and lines[5].split()[:2] == ["plate_clean", "2"]
    assert "(sd " in lines[7] and "copy_paste 4)" in lines[7]


def test_copy_paste_goes_on_alone_once_sd_is_full(capsys, fakes, tmp_path):
    fake = fakes()
    code, _, err = queue(capsys, HYBRID, "--quota", 4, "--mix", "sd:1,copy_paste:3", "--set", CLASSES,
                         "--server", fake.url, "--dataset", "cp_last")
    assert code == 0, err
    assert accepted(tmp_path / "out" / "cp_last") == per_source(1, 3)
    alone = [n for n, g in enumerate(fake.graphs) if g == CP_BRANCH]
    assert alone, fake.graphs                                          # pruned to the copy-paste writer's ancestors
    assert all(g == CP_BRANCH for g in fake.graphs[alone[0]:])         # SD full: never queued again
    assert sorted(fake.executed) == [0, 1] and sorted(fake.executed_cp) == list(range(6))


def test_sd_goes_on_without_the_branch_once_copy_paste_is_full(capsys, fakes, tmp_path):
    fake = fakes()
    code, _, err = queue(capsys, HYBRID, "--quota", 4, "--mix", "sd:3,copy_paste:1", "--set", CLASSES,
                         "--server", fake.url, "--dataset", "sd_last")
    assert code == 0, err
    assert accepted(tmp_path / "out" / "sd_last") == per_source(3, 1)
    without = [n for n, g in enumerate(fake.graphs) if g == SD_BRANCH]   # previews of the SD branch kept
    assert without and fake.graphs[-1] == SD_BRANCH
    assert all(g in (SD_BRANCH, SD_BRANCH | CP_BRANCH) for g in fake.graphs)
    assert sorted(fake.executed_cp) == [0, 1]


def test_without_mix_the_graphs_copy_paste_quota_stays(capsys, fakes, tmp_path):
    fake = fakes()
    code, _, err = queue(capsys, HYBRID, "--quota", 2, "--set", CLASSES, "--set", "14.quota_per_class=1",
                         "--server", fake.url, "--dataset", "default")
    assert code == 0, err
    assert accepted(tmp_path / "out" / "default") == per_source(2, 1)


def test_a_zero_weight_leaves_that_source_out(capsys, fakes, tmp_path):
    fake = fakes()
    code, _, err = queue(capsys, HYBRID, "--quota", 2, "--mix", "sd:1,copy_paste:0", "--set", CLASSES,
                         "--server", fake.url, "--dataset", "sd_only")
    assert code == 0, err
    assert accepted(tmp_path / "out" / "sd_only") == per_source(2, 0)
    assert fake.graphs and all(g == SD_BRANCH for g in fake.graphs) and fake.executed_cp == []

    code, _, err = queue(capsys, HYBRID, "--quota", 2, "--mix", "copy_paste:1", "--server", fake.url,
                         "--dataset", "cp_only")
    assert code == 0, err
    assert accepted(tmp_path / "out" / "cp_only") == per_source(0, 2)


def test_items_on_a_hybrid_graph_queue_the_sampler_branch_only(capsys, fakes, tmp_path):
    fake = fakes()
    code, _, err = queue(capsys, HYBRID, "--items", 3, "--server", fake.url, "--dataset", "items")
    assert code == 0, err
    assert sorted(fake.executed) == [0, 1, 2] and fake.executed_cp == []
    assert fake.graphs and all(g == SD_BRANCH for g in fake.graphs)


# ---------------------------------------------------------------------------------- copy-paste only
def test_copy_paste_only_graph_fills_gaps_without_duplicates(capsys, fakes, tmp_path):
    """The node's claims keep the queued prompts apart; a rejected item leaves a gap the next
    prompt fills."""
    server = fakes(reject_cp=lambda i: i == 2, delay=0.05)
    args = ["--quota", 3, "--per-prompt", 1, "--dataset", "cp2", "--pending", 2, "--server", server.url]
    code, out, err = queue(capsys, COPY_PASTE, *args)
    assert code == 0, err
    ds = tmp_path / "out" / "cp2"
    assert accepted(ds) == per_source(0, 3)
    made = server.executed_cp
    assert len(made) == len(set(made)) and 2 in made and not stored_twice(ds)
    assert all(g == {"1", "2", "3", "4"} for g in server.graphs)   # previews 5, 6 left out
    assert "copy_paste:" in out and "copy_paste: plate_clean 3/3 plate_heavily_dirty 3/3" in err


def test_a_copy_paste_quota_the_filter_keeps_short_ends_with_one_line(capsys, fakes, tmp_path):
    """Every copy-paste image rejected: the run stops at --max-items with the quota short (exit 1,
    one line; the demo says the same line and keeps the dataset: QuotaNotReached)."""
    server = fakes(reject_cp=lambda i: True)
    args = ["--quota", 2, "--per-prompt", 2, "--max-items", 4, "--dataset", "cp_short", "--server", server.url]
    code, out, err = queue(capsys, COPY_PASTE, *args)
    assert code == 1 and out == ""
    assert ("copy-paste quota not reached for {'plate_clean': '0/2', 'plate_heavily_dirty': '0/2'}: 4 copy-paste "
            "items asked for, --max-items 4 reached") in err
    live = manifest.live(manifest.read(tmp_path / "out" / "cp_short").records).values()
    assert live and all(r["decision"] == "rejected" for r in live)   # what was made stays


def test_copy_paste_prompts_left_by_a_killed_client_are_adopted(fakes, tmp_path):
    fake = fakes(delay=0.3)

    def run(log=None):
        wf = Workflow.load(COPY_PASTE)
        wf.set_dataset("adopt")
        wf.set_input("1", "count", 1)
        settings = RunSettings(server=fake.url, copy_paste_quota=2, output_dir=tmp_path / "out", poll=0.02,
                               pending=3, give_up_after=2.0)
        return QueueRun(wf, None, settings, Progress(log or io.StringIO(), every=0))

    dead = run()
    dead.connect()
    dead._fill({}, set())
    assert len(fake.pending) + (fake.running is not None) == 3
    log = io.StringIO()
    result = run(log).run()
    assert "earlier run are still queued" in log.getvalue()
    assert accepted(tmp_path / "out" / "adopt") == per_source(0, 2)
    assert result.by_source["copy_paste"]["plate_clean"]["accepted"] == 2


def test_an_sd_run_on_a_dataset_with_copy_paste_images_is_not_stopped_by_them(capsys, fakes, tmp_path):
    """The writers count every source toward quota_per_class: the client's safety net leaves room
    for the other source's images, and the SD targets count SD images only."""
    fake = fakes()
    assert queue(capsys, COPY_PASTE, "--quota", 2, "--per-prompt", 2, "--server", fake.url,
                 "--dataset", "mixed")[0] == 0
    code, out, err = queue(capsys, SD_ONLY, "--quota", 2, "--set", CLASSES, "--server", fake.url, "--dataset", "mixed")
    assert code == 0, err
    assert accepted(tmp_path / "out" / "mixed") == per_source(2, 2)
    assert sorted(fake.executed) == [0, 1, 2, 3]
    assert "  sd (source generated):" in out and "  copy_paste:" in out   # both sources in the summary


# ---------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("workflow, args, code, message", [
    (HYBRID, ["--quota", "4", "--mix", "foo:1"],
     2, "argument --mix: unknown source 'foo' (sources: sd, copy_paste), got 'foo:1'"),
    (HYBRID, ["--quota", "4", "--mix", "sd:1,copy_paste"], 2, "argument --mix: expected SOURCE:WEIGHT"),
    (HYBRID, ["--quota", "4", "--mix", "sd:0,copy_paste:0"], 2, "argument --mix: at least one weight must be > 0"),
    (HYBRID, ["--quota", "4", "--mix", "sd:1,sd:2"], 2, "argument --mix: source 'sd' given twice"),
    (HYBRID, ["--quota", "4", "--mix", "sd:x,copy_paste:1"], 2, "argument --mix: the weight of 'sd' must be a number"),
    (SD_ONLY, ["--quota", "4", "--mix", "sd:1,copy_paste:1"],
     1, f"--mix sd:1,copy_paste:1: {SD_ONLY} has no DTGenCopyPaste node, so there is nothing to mix"),
    (COPY_PASTE, ["--quota", "4", "--mix", "sd:1,copy_paste:1"],
     1, f"--mix sd:1,copy_paste:1: {COPY_PASTE} has no DTGenPromptSampler"),
    (HYBRID, ["--items", "4", "--mix", "sd:1,copy_paste:1"], 1, "cannot be used with --items"),
    (HYBRID, ["--quota", "plate_clean=4", "--mix", "sd:1,copy_paste:1"],
     1, "--quota plate_clean=4: the copy-paste node has one quota_per_class for all its classes"),
    (COPY_PASTE, ["--quota", "plate_clean=4"], 1, "the copy-paste node has one quota_per_class"),
    (COPY_PASTE, ["--items", "4"], 1, f"--items: {COPY_PASTE} has no DTGenPromptSampler"),
])
def test_refusals_are_one_line_naming_the_flag(capsys, workflow, args, code, message):
    got, out, err = queue(capsys, workflow, *args, "--server", "127.0.0.1:9")
    assert got == code and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err


def test_mix_split_and_parse():
    assert split_mix(200, mix_arg("sd:1,copy_paste:1")) == (100, 100)
    assert split_mix(5, mix_arg("sd:1,copy_paste:1")) == (3, 2)           # a tie goes to sd
    assert split_mix(4, mix_arg("sd:1,copy_paste:3")) == (1, 3)
    assert split_mix(3, mix_arg("copy_paste:2")) == (0, 3)                # a source not named gets 0
    assert split_mix(10, mix_arg("sd:0.5, copy_paste:2")) == (2, 8)
    assert mix_arg("copy_paste:1,sd:2") == {"sd": Fraction(2), "copy_paste": Fraction(1)}


# ---------------------------------------------------------------------------------- workflow
def test_hybrid_workflow_writers_dataset_and_pruning():
    wf = Workflow.load(HYBRID)
    assert (wf.sampler_id, wf.copy_paste_id, wf.writer_id, wf.copy_paste_writer_ids) == ("1", "14", "11", ["15"])
    wf.set_dataset("mine")
    assert {k for k, n in wf.graph.items() if n["inputs"].get("dataset_name") == "mine"} == {"1", "10", "11", "14", "15"}
    full, sd = wf.item_graph(7, 2), wf.item_graph(7, 2, copy_paste=False, writer_quota=9)
    assert set(full) == SD_BRANCH | CP_BRANCH and set(sd) == SD_BRANCH
    assert (sd["1"]["inputs"]["start_index"], sd["1"]["inputs"]["count"], sd["1"]["inputs"]["quota_per_class"]) == (7, 2, 0)
    assert sd["11"]["inputs"]["quota_per_class"] == 9
    cp = wf.copy_paste_graph(writer_quota=5)
    assert set(cp) == CP_BRANCH and cp["15"]["inputs"]["quota_per_class"] == 5
    assert wf.graph["15"]["inputs"]["quota_per_class"] == 0            # the loaded graph is not changed
    assert wf.copy_paste_inputs() == {"count": 1, "quota_per_class": 100, "start_index": 0, "classes": ()}

    only = Workflow.load(COPY_PASTE)
    assert (only.sampler_id, only.writer_id, only.copy_paste_writer_ids) == (None, "4", ["4"])
    assert set(only.copy_paste_graph()) == {"1", "2", "3", "4"}


def _hybrid():
    return json.loads(HYBRID.read_text())


@pytest.mark.parametrize("change, message", [
    (lambda g: g["15"]["inputs"].update(positive=["1", 0]), "writer node 15 is fed by both"),
    (lambda g: g.update({"20": {"class_type": "DTGenDatasetWriter", "inputs": {"dataset_name": "x"}}}),
     "writer node 20 is fed by neither"),
    (lambda g: g.pop("15"), "the DTGenCopyPaste node 14 feeds no DTGenDatasetWriter"),
    (lambda g: g.update({"20": copy.deepcopy(g["1"])}), "at most one DTGenPromptSampler node, found 2"),
    (lambda g: [g.pop(k) for k in ("1", "14")], "needs a DTGenPromptSampler or a DTGenCopyPaste node"),
])
def test_workflow_shapes_that_cannot_be_planned(change, message):
    graph = _hybrid()
    change(graph)
    with pytest.raises(WorkflowError, match=message):
        Workflow(graph, "h.json")


def test_writers_naming_two_datasets_need_dataset():
    graph = _hybrid()
    graph["15"]["inputs"]["dataset_name"] = "other"
    wf = Workflow(graph, "h.json")
    with pytest.raises(WorkflowError, match="the writers name different datasets .*pass --dataset"):
        _ = wf.dataset_name
    wf.set_dataset("one")
    assert wf.dataset_name == "one"


# ---------------------------------------------------------------------------------- counting, progress
def _items(source, labels, start=0, accepted=True):
    meta = {"source": source} if source != "generated" else {"pack_hash": "ph"}
    return [ScoredItem(image=np.full((4, 4, 3), (start + n) / 20, np.float32), label=label, prompt=label,
                       seed=start + n, index=start + n,
                       metadata={**meta, "stream": f"{source}-s", "item_id": f"{source}:{start + n}"},
                       score=0.3, accepted=accepted) for n, label in enumerate(labels)]


def test_view_counts_each_source_apart(tmp_path):
    ds = tmp_path / "ds"
    with DatasetWriter(ds) as w:
        w.write(_items("generated", ["a", "a", "b"]) + _items("copy_paste", ["a", "b", "b"], start=10)
                + _items("copy_paste", ["b"], start=20, accepted=False))
    view = DatasetView(ds, pack_hash="ph").refresh()
    assert view.counts("generated") == {"a": {"accepted": 2, "rejected": 0}, "b": {"accepted": 1, "rejected": 0}}
    assert view.counts("copy_paste") == {"a": {"accepted": 1, "rejected": 0}, "b": {"accepted": 2, "rejected": 1}}
    assert view.counts()["b"] == {"accepted": 3, "rejected": 1}
    assert view.accepted_outside({"generated"}) == {"a": 1, "b": 2}
    assert view.accepted_outside({"generated", "copy_paste"}) == {}
    assert view.sources() == {"generated", "copy_paste"} and view.labels_of("copy_paste") == {"a", "b"}
    assert view.done_indices() == {0, 1, 2}                            # the sampler's stream only


def test_status_line_and_summary_per_source():
    sources = [("sd", {"a": {"accepted": 2, "rejected": 1}}, {"a": 2, "b": 2}),
               ("copy_paste", {"a": {"accepted": 1, "rejected": 0}}, {"a": 3})]
    line = status_line({"a": {"accepted": 3, "rejected": 1}}, None, None, 2, "1 server", 10.0, 4, by_source=sources)
    assert line.startswith("[") and "3/7 accepted" in line
    assert "| sd: a 2/2 b 0/2 | copy_paste: a 1/3 |" in line and "acceptance 75%" in line
    assert "copy_paste: -" in status_line({}, None, None, 0, "1 server", 1.0, 0, by_source=[("copy_paste", {}, {})])
    out = io.StringIO()
    print_summary(RunResult(dataset_dir="/d", counts={}, queued=0, items_done=5, failed=[], elapsed=1.0,
                            servers={"u": 5}, by_source={s: c for s, c, _ in sources},
                            items_by_source={"sd": 3, "copy_paste": 2}), "ds", out)
    assert out.getvalue().splitlines() == [
        "dataset: /d", "  sd (source generated):", "    a                               2 accepted      1 rejected",
        "  copy_paste:", "    a                               1 accepted      0 rejected",
        "5 item(s) generated (sd 3, copy_paste 2) in 1.0 s (u: 5)"]
