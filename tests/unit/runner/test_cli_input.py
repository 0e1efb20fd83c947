"""The queue command refuses bad input with one line on stderr and a non-zero exit: argument values
(exit 2, at parse time), --set names, and ComfyUI's validation errors with their reasons."""
from __future__ import annotations

import io

import pytest
from dtgen.runner.api import describe_rejection
from dtgen.runner.cli import main, print_summary
from dtgen.runner.scheduler import RunResult
from fake_comfy import FakeComfy
from support.pkg import ROOT

EXAMPLE = str(ROOT / "example_workflows" / "api" / "dtgen_sd35_lora.json")
SECONDS = "must be a finite number of seconds > 0"


def run(capsys, *args):
    """(exit code, stdout, stderr) of ``python -m runner queue EXAMPLE args...``."""
    try:
        code = main(["queue", EXAMPLE, *map(str, args)])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------ argument values
@pytest.mark.parametrize("args, message", [
    (["--quota", "0"], "argument --quota: a quota must be >= 1, got '0'"),
    (["--quota", "plate_clean=0"], "argument --quota: a quota must be >= 1, got 'plate_clean=0'"),
    (["--quota", "-3"], "argument --quota: a quota must be >= 1, got '-3'"),
    (["--quota", "lots"], "argument --quota: expected N or label=N, got 'lots'"),
    (["--items", "0"], "argument --items: must be >= 1, got 0"),
    (["--quota", "1", "--retries", "-1"], "argument --retries: must be >= 0, got -1"),
    (["--quota", "1", "--pending", "0"], "argument --pending: must be >= 1, got 0"),
    (["--quota", "1", "--per-prompt", "0"], "argument --per-prompt: must be between 1 and 4096, got 0"),
    (["--quota", "1", "--per-prompt", "5000"], "argument --per-prompt: must be between 1 and 4096, got 5000"),
    (["--quota", "1", "--per-prompt", "2.5"], "argument --per-prompt: expected a whole number, got '2.5'"),
    (["--quota", "1", "--start", "-1"], "argument --start: must be >= 0, got -1"),
    (["--quota", "1", "--max-items", "0"], "argument --max-items: must be >= 1, got 0"),
    (["--quota", "1", "--give-up-after", "0"], f"argument --give-up-after: {SECONDS}, got '0'"),
    (["--quota", "1", "--give-up-after", "nan"], f"argument --give-up-after: {SECONDS}, got 'nan'"),
    (["--quota", "1", "--ray-workers", "0"], "argument --ray-workers: must be >= 1, got 0"),
    (["--quota", "1", "--model-dir", "checkpoints"], "argument --model-dir: expected FOLDER=PATH, e.g. "
                                                      "checkpoints=/data/ckpt, got 'checkpoints'"),
    (["--quota", "1", "--give-up-after=-5"], f"argument --give-up-after: {SECONDS}, got '-5'"),
    (["--quota", "1", "--give-up-after", "inf"], f"argument --give-up-after: {SECONDS}, got 'inf'"),
    (["--quota", "1", "--pack-dir", "/nonexistent"], "argument --pack-dir: '/nonexistent' is not an existing folder"),
])
def test_bad_values_are_refused_at_parse_time(capsys, args, message):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    assert one_line(err).startswith(f"error: {message} (see python -m runner queue --help)"), err


def test_pack_dir_must_be_a_folder_not_a_file(capsys, tmp_path):
    file = tmp_path / "pack.yaml"
    file.write_text("x")
    code, _, err = run(capsys, "--quota", "1", "--pack-dir", file)
    assert code == 2 and f"argument --pack-dir: '{file}' is not an existing folder" in one_line(err)


def test_a_missing_argument_is_one_line_too(capsys):
    code, _, err = run(capsys)
    assert code == 2
    assert one_line(err).startswith("error: one of the arguments --quota --items is required")


# ------------------------------------------------------------------------------ --set names
def test_set_refuses_an_input_the_node_does_not_have(capsys):
    code, out, err = run(capsys, "--quota", "1", "--set", "7.stepz=4")
    assert code == 1 and out == ""
    assert one_line(err).startswith("error: --set '7.stepz=4': node 7 (KSampler) has no input 'stepz' "
                                    "(did you mean 'steps'?); its inputs: model, positive, negative, latent_image, "
                                    "seed, steps, cfg, sampler_name, scheduler, denoise"), err
    assert "cannot be checked offline" in err


def test_set_by_class_type_checks_every_node_and_hints_only_when_close(capsys):
    code, _, err = run(capsys, "--quota", "1", "--set", "KSampler.zzzzzz=4")
    assert code == 1
    assert "node 7 (KSampler) has no input 'zzzzzz'; its inputs: model," in one_line(err)
    assert "did you mean" not in err


@pytest.mark.parametrize("value, message", [
    ("NaN", "nan is not a finite number"),
    ("1e999", "inf is not a finite number"),
    ("[1,2]", "a JSON list is a link in the API format"),
])
def test_set_refuses_values_that_are_not_literals(capsys, value, message):
    code, _, err = run(capsys, "--quota", "1", "--set", f"7.cfg={value}")
    assert code == 1 and f"error: --set '7.cfg={value}': {message}" in one_line(err)


# ------------------------------------------------------------------------------ ComfyUI's refusals
def min_error(name, value, low):
    """ComfyUI's execution.validate_inputs error for a number below its minimum."""
    return {"type": "value_smaller_than_min", "message": f"Value {value} smaller than min of {low}",
            "details": name, "extra_info": {"input_name": name, "input_config": ["INT", {"min": low}],
                                            "received_value": value}}


def custom_errors(names, reason):
    """ComfyUI repeats a failed validate_inputs once per input it takes, details "input - reason"."""
    return [{"type": "custom_validation_failed", "message": "Custom validation failed for node",
             "details": f"{name} - {reason}", "extra_info": {"input_name": name}} for name in names]


def test_rejection_says_why_for_each_input():
    answer = {"error": {"message": "Prompt outputs failed validation", "details": ""}, "node_errors": {
        "7": {"class_type": "KSampler", "errors": [
            min_error("steps", -4, 1),
            {"type": "value_not_in_list", "message": "Value not in list",
             "details": "sampler_name: 'eulr' not in ['euler', 'dpmpp_2m']",
             "extra_info": {"input_name": "sampler_name", "received_value": "eulr"}},
            {"type": "invalid_input_type", "message": "Failed to convert an input value to a FLOAT value",
             "details": "cfg, abc, could not convert string to float: 'abc'",
             "extra_info": {"input_name": "cfg", "received_value": "abc"}}]},
        "11": {"class_type": "DTGenDatasetWriter", "errors": [
            *custom_errors(["dataset_name", "quota_per_class", "image_format"], "unsafe dataset name '../x'"),
            *custom_errors(["dataset_name", "quota_per_class"], "another\nproblem")]},
    }}
    assert describe_rejection(answer).split("; ") == [
        ("node 11 (DTGenDatasetWriter) inputs dataset_name, quota_per_class, image_format: "
         "Custom validation failed for node: unsafe dataset name '../x'"),
        ("node 11 (DTGenDatasetWriter) inputs dataset_name, quota_per_class: "
         "Custom validation failed for node: another problem"),
        "node 7 (KSampler) input steps: Value -4 smaller than min of 1",
        "node 7 (KSampler) input sampler_name: Value not in list: 'eulr' not in ['euler', 'dpmpp_2m']",
        ("node 7 (KSampler) input cfg: Failed to convert an input value to a FLOAT value: abc, could not convert "
         "string to float: 'abc'"),
    ]


def test_custom_validation_without_a_reason_keeps_comfyuis_message():
    answer = {"node_errors": {"9": {"class_type": "X", "errors": [
        {"type": "custom_validation_failed", "message": "Custom validation failed for node", "details": "arch",
         "extra_info": {"input_name": "arch"}}]}}}
    assert describe_rejection(answer) == "node 9 (X) input arch: Custom validation failed for node"


@pytest.fixture
def fake(tmp_path):
    def validate(graph):
        steps = graph["7"]["inputs"]["steps"]
        return {"7": {"class_type": "KSampler", "errors": [min_error("steps", steps, 1)],
                      "dependent_outputs": ["11"]}} if steps < 1 else {}

    server = FakeComfy(tmp_path / "out", validate=validate)
    yield server
    server.stop()


def test_a_refused_graph_is_one_line_with_the_reason(capsys, fake):
    code, _, err = run(capsys, "--quota", "1", "--server", fake.url, "--set", "7.steps=-4")
    assert code == 1
    assert one_line(err) == (f"error: {fake.url} rejected the workflow: "
                             "node 7 (KSampler) input steps: Value -4 smaller than min of 1\n")
    assert fake.executed == []


# ------------------------------------------------------------------------------ quota already met
def test_a_quota_already_met_queues_nothing_and_names_the_dataset(capsys, fake, tmp_path):
    args = ["--quota", "1", "--server", fake.url, "--set", "1.classes=plate_clean,bowl_clean", "--dataset", "ds"]
    code, out, _ = run(capsys, *args)
    assert code == 0 and sorted(fake.executed) == [0, 1]
    ds = tmp_path / "out" / "ds"
    assert out.splitlines()[0] == f"dataset: {ds}"
    for again in ([], ["--output-dir", tmp_path / "out"]):          # found from the history / the folder
        code, out, _ = run(capsys, *args, *again)
        assert code == 0 and sorted(fake.executed) == [0, 1]
        lines = out.splitlines()
        assert lines[0] == f"dataset: {ds}"
        assert lines[1].split() == ["bowl_clean", "1", "accepted", "0", "rejected"]
        assert lines[3].startswith("0 item(s) generated")


def test_summary_without_a_dataset_folder_never_says_none():
    out = io.StringIO()
    print_summary(RunResult(dataset_dir=None, counts={}, queued=0, items_done=0, failed=[], elapsed=0.0),
                  "ds", out)
    first = out.getvalue().splitlines()[0]
    assert first.startswith("dataset: ds (") and "None" not in out.getvalue()
