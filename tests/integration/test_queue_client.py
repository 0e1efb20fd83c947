"""The queue client (``python <checkout>/runner queue``) on real ComfyUI (CPU, tiny SD3 + LoRA):
per-class quotas, resume after SIGKILL, readable refusals, ``comfy run`` on an API twin. Several
servers, one of them killed mid-run, are Ray workers now: test_queue_ray.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

from dtgen.nodes.store import manifest
from support.comfy_server import free_port
from support.graphs import example_api
from support.pkg import ROOT

RUNNER = [sys.executable, str(ROOT / "runner"), "queue"]
TWO_CLASSES = "plate_clean,bowl_clean"


def small_workflow(tmp_path, name="wf.json", **overrides):
    graph = example_api("dtgen_sd35_lora", **overrides)
    for node in graph.values():
        if node["class_type"] == "EmptySD3LatentImage":
            node["inputs"]["width"] = node["inputs"]["height"] = 64
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
    path = tmp_path / name
    path.write_text(json.dumps(graph))
    return path


def client(args, tmp_path, tag):
    with open(tmp_path / f"{tag}.out", "w") as out, open(tmp_path / f"{tag}.err", "w") as err:
        return subprocess.Popen([*RUNNER, *map(str, args)], stdout=out, stderr=err, cwd=tmp_path)


def finish(proc, tmp_path, tag, timeout=900):
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "timeout"
    return rc, (tmp_path / f"{tag}.out").read_text(), (tmp_path / f"{tag}.err").read_text()


def all_lines(ds):
    return manifest.read(ds).records


def live(ds):
    return list(manifest.live(all_lines(ds)).values())


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def check_dataset(ds, quota, labels):
    recs = live(ds)
    accepted = Counter(r["label"] for r in recs if r["decision"] == "accepted")
    assert accepted == {label: quota for label in labels}
    indices = [r["index"] for r in all_lines(ds)]
    assert len(indices) == len(set(indices)), f"an index was written twice: {sorted(indices)}"
    for r in recs:
        assert (ds / r["file"]).is_file(), r["file"]
    on_disk = {p.relative_to(ds).as_posix() for p in (ds / "images").rglob("*.png")}
    assert on_disk == {r["file"] for r in recs if r["decision"] == "accepted"}
    return recs


def queued_indices(url, dataset):
    """Item indices of every prompt this dataset's client queued, from the server's history."""
    with __import__("urllib.request").request.urlopen(url + "/history?max_items=100000", timeout=30) as r:
        history = json.loads(r.read())
    out = []
    for entry in history.values():
        mark = entry["prompt"][3].get("dtgen_queue") or {}
        if mark.get("dataset") == dataset:
            out.extend(mark["indices"])
    return out


def test_quota_resumes_after_sigkill_without_requeueing(comfy_server, tmp_path):
    wf = small_workflow(tmp_path, classes=TWO_CLASSES)
    ds = comfy_server.output_dir / "qc_resume"
    args = [wf, "--server", comfy_server.url, "--quota", 2, "--dataset", "qc_resume", "--pending", 2]
    first = client(args, tmp_path, "first")
    wait_for(lambda: (ds / "manifest.jsonl").is_file() and len(all_lines(ds)) >= 1, 600, "a first stored item")
    first.send_signal(signal.SIGKILL)
    first.wait()

    rc, out, err = finish(client(args, tmp_path, "second"), tmp_path, "second")
    assert rc == 0, err
    recs = check_dataset(ds, 2, TWO_CLASSES.split(","))
    assert f"dataset: {ds}" in out
    assert "2/2" in err and "acceptance" in err        # the progress line
    # across the killed run and the resumed one, every index was queued exactly once
    queued = queued_indices(comfy_server.url, "qc_resume")
    assert sorted(queued) == sorted(set(queued))
    assert {r["index"] for r in recs} <= set(queued)

    # run again: the quota is met, nothing is queued
    rc, out, err = finish(client(args, tmp_path, "third"), tmp_path, "third")
    assert rc == 0, err
    assert sorted(queued_indices(comfy_server.url, "qc_resume")) == sorted(queued)


def test_items_mode_with_several_items_per_prompt(comfy_server, tmp_path):
    wf = small_workflow(tmp_path)
    rc, _, err = finish(client([wf, "--server", comfy_server.url, "--items", 4, "--per-prompt", 2, "--start", 10,
                                "--dataset", "qc_items"], tmp_path, "items"), tmp_path, "items")
    assert rc == 0, err
    recs = live(comfy_server.output_dir / "qc_items")
    assert sorted(r["index"] for r in recs) == [10, 11, 12, 13]
    assert sorted(queued_indices(comfy_server.url, "qc_items")) == [10, 11, 12, 13]


def test_refusals_are_one_readable_line(comfy_server, tmp_path):
    wf = small_workflow(tmp_path)
    rc, out, err = finish(client([wf, "--server", comfy_server.url, "--items", 1, "--ckpt", "missing_sd35.safetensors",
                                  "--dataset", "qc_refused"], tmp_path, "model"), tmp_path, "model", 120)
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "'missing_sd35.safetensors'" in err and "models/checkpoints" in err and "tiny_sd3.safetensors" in err

    rc, _, err = finish(client([wf, "--server", f"127.0.0.1:{free_port()}", "--items", 1], tmp_path, "down"),
                        tmp_path, "down", 60)
    assert rc == 1 and err.count("\n") == 1 and "cannot reach ComfyUI" in err

    rc, _, err = finish(client([wf, "--server", comfy_server.url, "--quota", "mug_clean=3"], tmp_path, "label"),
                        tmp_path, "label", 60)
    assert rc == 1 and "'mug_clean' is not sampled" in err and "plate_clean" in err

    rc, _, err = finish(client([wf, "--server", comfy_server.url, "--server", comfy_server.url, "--quota", 1],
                               tmp_path, "two"), tmp_path, "two", 60)
    assert rc == 1 and err.count("\n") == 1 and "several ComfyUI servers are Ray workers; add --ray" in err


def test_comfy_cli_runs_the_api_twin(comfy_server, tmp_path):
    wf = tmp_path / "twin.json"
    wf.write_text(json.dumps(example_api("dtgen_sd35_lora", start_index=3, dataset_name="qc_comfy_cli")))
    env = dict(os.environ, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"))
    comfy = [sys.executable, "-m", "comfy_cli"]
    subprocess.run([*comfy, "--skip-prompt", "tracking", "disable"], env=env, check=True, capture_output=True)
    port = comfy_server.url.rsplit(":", 1)[1]
    done = subprocess.run([*comfy, "run", "--workflow", str(wf), "--host", "127.0.0.1", "--port", port, "--wait"],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"status": "completed"' in done.stdout
    recs = live(comfy_server.output_dir / "qc_comfy_cli")
    assert [r["index"] for r in recs] == [3]
