"""Hostile and careless input through ComfyUI's HTTP API: refused at queue time without blocking
the server, no write through a symlink, a dataset consistent after a crash even when no writer runs
again, no stale "written" from ComfyUI's cache, and two servers in resume mode never make the same item."""
from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request

import pytest
from support.graphs import example_api, manifest, run_ok

from .conftest import start_server

SAMPLER, FILTER, WRITER = "1", "10", "11"


def _laughs() -> str:
    lines = ["l0: &l0 [" + ", ".join(['"lol"'] * 9) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\nversion: 1\n"


def _expansion_bomb() -> str:
    slots = "".join(f"  s{i}: ['{{s{i + 1}}} {{s{i + 1}}}']\n" for i in range(60))
    return ("version: 1\nname: bomb\nslots:\n" + slots + "  s60: [x]\n"
            "classes:\n  - label: a\n    templates: ['{s0}']\n")


def _all_accepted(dataset: str, **overrides) -> dict:
    """The main template, every image accepted (fixed threshold below any cosine)."""
    return example_api("dtgen_sd35_lora", dataset_name=dataset, method="fixed", fixed_threshold=-1.0,
                       classes="plate_clean,bowl_clean", **overrides)


def _queue_while_polling(client, url: str, graph: dict, settle: float = 0.0) -> tuple[dict, float, list[float]]:
    """Queue ``graph`` while another thread asks ``/system_stats`` over and over: (ComfyUI's answer,
    seconds the queue call took, the latency of each /system_stats answer meanwhile)."""
    latencies, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            start = time.perf_counter()
            with urllib.request.urlopen(url + "/system_stats", timeout=10) as r:
                assert r.status == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    start = time.perf_counter()
    answer = client.queue(graph)
    elapsed = time.perf_counter() - start
    time.sleep(settle)
    stop.set()
    poller.join(15)
    return answer, elapsed, latencies


@pytest.mark.parametrize("pack,limit", [(_laughs(), "MAX_YAML_NODES"), (_expansion_bomb(), "MAX_SLOT_DEPTH")],
                         ids=["billion_laughs", "expansion_bomb"])
def test_a_prompt_pack_bomb_is_refused_at_queue_time_and_the_server_keeps_answering(client, comfy_server,
                                                                                     pack, limit):
    graph = example_api("dtgen_sd35_lora", dataset_name="bomb")
    graph[SAMPLER]["inputs"]["inline_yaml"] = pack
    # the server's first validation of this graph imports what the other nodes' checks need (open_clip
    # ...): done once here, refused by its dataset name, so the time below is the pack's alone
    assert client.queue(example_api("dtgen_sd35_lora", dataset_name="../warm_up")).get("node_errors")
    answer, elapsed, latencies = _queue_while_polling(client, comfy_server.url, graph, settle=0.2)
    errors = json.dumps(answer.get("node_errors", {}).get(SAMPLER, {}))
    assert limit in errors and "<inline_yaml>" in errors, answer
    assert elapsed < 1.0, f"refusal took {elapsed:.2f} s"
    assert latencies and max(latencies) < 1.0, latencies
    print(f"{limit}: refused in {elapsed * 1000:.0f} ms, /system_stats answered {len(latencies)} times, "
          f"slowest {max(latencies) * 1000:.0f} ms")


def test_a_pack_at_the_size_budget_is_parsed_off_the_event_loop(client, comfy_server):
    """A 120 KB flow list (60,000 nodes, inside every budget) takes seconds of pure-Python YAML; the
    check runs in a worker thread (adapters/off_loop.py), so the server answers meanwhile."""
    graph = example_api("dtgen_sd35_lora", dataset_name="big_pack")
    graph[SAMPLER]["inputs"]["inline_yaml"] = "[" + "1," * 60_000 + "1]\n"
    answer, elapsed, latencies = _queue_while_polling(client, comfy_server.url, graph)
    errors = json.dumps(answer.get("node_errors", {}).get(SAMPLER, {}))
    assert "<inline_yaml>" in errors and "mapping" in errors, answer
    during = len(latencies)
    assert during >= 3 and max(latencies) < 1.0, (elapsed, latencies)
    print(f"a {len(graph[SAMPLER]['inputs']['inline_yaml'])}-byte pack refused in {elapsed:.2f} s; /system_stats "
          f"answered {during} times meanwhile, slowest {max(latencies) * 1000:.0f} ms")


def test_a_label_the_layout_uses_is_refused_at_queue_time(client):
    graph = example_api("dtgen_sd35_lora", dataset_name="reserved")
    graph[SAMPLER]["inputs"]["inline_yaml"] = ("version: 1\nname: t\nclasses:\n  - label: metadata.jsonl\n"
                                              "    templates: ['x']\n")
    errors = json.dumps(client.queue(graph).get("node_errors", {}).get(SAMPLER, {}))
    assert "file name the dataset layout uses" in errors, errors


def test_a_dataset_name_too_long_for_the_file_system_is_refused_at_queue_time(client, comfy_server):
    name = "/".join(["x" * 100] * 50)
    errors = json.dumps(client.queue(example_api("dtgen_sd35_lora", dataset_name=name)).get("node_errors", {}))
    assert "the limit is 200" in errors, errors
    assert not (comfy_server.output_dir / ("x" * 100)).exists()


def test_validation_errors_come_once_per_problem_for_the_sampler(client):
    """ComfyUI repeats a node's validation failure under every input its check names: the sampler
    names only the three inputs of its pack check (was 9), so a class typo shows at most 3 times."""
    graph = example_api("dtgen_sd35_lora", classes="plate_clean, teapot_clean")
    errors = client.queue(graph)["node_errors"][SAMPLER]["errors"]
    assert {e["extra_info"]["input_name"] for e in errors} <= {"pack", "classes", "inline_yaml"}, errors
    assert 1 <= len(errors) <= 3 and all("teapot_clean" in e["details"] for e in errors), errors


def test_the_writer_reruns_when_its_dataset_was_deleted(client, comfy_server):
    """ComfyUI replays a cached output node with unchanged inputs: the writer always runs, so a
    deleted folder is written again instead of a stale 'written' summary."""
    graph = _all_accepted("w1", quota_per_class=0, count=2)
    graph[FILTER]["inputs"]["dataset_name"] = ""           # no history: only the writer sees the folder
    run_ok(client, graph)
    ds = comfy_server.output_dir / "w1"
    assert len(manifest(ds)) == 2
    shutil.rmtree(ds)
    result = run_ok(client, graph)
    cached = [n for e in result.events if e["type"] == "execution_cached" for n in e["data"]["nodes"]]
    assert WRITER not in cached and FILTER in cached
    assert len(manifest(ds)) == 2 and len(list((ds / "images").rglob("*.png"))) == 2
    again = run_ok(client, graph)                         # unchanged: runs, stores nothing twice
    assert "2 skipped, already in the dataset" in json.dumps(again.outputs(WRITER))
    assert len(manifest(ds)) == 2


def test_a_crash_after_the_manifest_commit_is_repaired_even_with_every_quota_full(client, comfy_server):
    """The kill leaves the manifest committed, images/metadata.jsonl behind it and no .clean; the
    next queue run in resume mode has nothing to make (quota full), so no writer runs: the sampler
    repairs the dataset on open, and it loads in one line again."""
    graph = _all_accepted("mfull", quota_per_class=1, count=2)
    run_ok(client, graph)
    ds = comfy_server.output_dir / "mfull"
    assert len(manifest(ds)) == 2
    (ds / "images" / "metadata.jsonl").write_bytes(b"")     # the state the kill left
    (ds / ".clean").unlink()
    result = run_ok(client, graph)
    assert WRITER not in result.executed_nodes()             # nothing left to make
    rows = (ds / "images" / "metadata.jsonl").read_text().splitlines()
    assert len(rows) == 2 and (ds / ".clean").exists()
    from datasets import load_dataset

    loaded = load_dataset("imagefolder", data_dir=str(ds / "images"), split="train")
    assert loaded.num_rows == 2


def test_a_symlink_in_the_dataset_is_refused_and_nothing_is_written_outside(client, comfy_server, tmp_path):
    graph = _all_accepted("linked", quota_per_class=0, count=2)
    run_ok(client, graph)
    ds = comfy_server.output_dir / "linked"
    outside = tmp_path / "outside"
    outside.mkdir()
    label_dir = ds / "images" / "plate_clean"
    shutil.rmtree(label_dir)
    label_dir.symlink_to(outside, target_is_directory=True)
    graph[SAMPLER]["inputs"]["start_index"] = 2
    result = client.run(graph)
    assert result.error is not None, "a symlinked label folder was written through"
    assert result.error["exception_type"] == "dtgen.DatasetSymlinkError", result.error
    assert "images/plate_clean" in result.error["exception_message"]
    assert list(outside.iterdir()) == []


def test_two_servers_in_resume_mode_make_different_items(client, comfy_server, comfyui_path, model_dirs,
                                                         tmp_path_factory):
    second = start_server(comfyui_path, tmp_path_factory.mktemp("second"), model_dirs,
                          extra_args=["--output-directory", str(comfy_server.output_dir)])
    try:
        from support.comfy_server import ComfyClient

        other = ComfyClient(second.url)
        graph = _all_accepted("two_servers", quota_per_class=4, count=4)
        results = {}
        threads = [threading.Thread(target=lambda c=c, k=k: results.__setitem__(k, c.run(graph)))
                   for k, c in (("a", client), ("b", other))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        other.close()
    finally:
        second.stop()
    for key, result in results.items():
        assert result.error is None, (key, result.error)
        text = json.dumps(result.outputs(WRITER))
        assert "skipped" not in text, text                  # no image made twice
    records = manifest(comfy_server.output_dir / "two_servers")
    assert len(records) == 8 and len({r["index"] for r in records}) == 8


def test_a_fifo_in_a_cutout_set_is_refused_at_queue_time_without_blocking_the_server(client, comfy_server):
    """A FIFO named like a photo used to freeze ComfyUI's event loop: the queue-time check opened it
    and waited for a writer. Now it is refused within a second, naming the file, and the server answers."""
    import os

    from PIL import Image

    folder = comfy_server.base_dir / "input" / "fifo_cutouts" / "plate_clean"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "photo.jpg")
    Image.new("L", (64, 64), 255).save(folder / "photo_mask.png")
    graph = example_api("dtgen_copy_paste", dataset_name="fifo_refused", count=1)
    node = next(k for k, v in graph.items() if v["class_type"] == "DTGenCopyPaste")
    graph[node]["inputs"]["cutouts"] = "input/fifo_cutouts"
    start = time.perf_counter()
    answer = client.queue(graph)
    elapsed = time.perf_counter() - start
    text = json.dumps(answer.get("node_errors", {}).get(node, {}))
    assert "photo.jpg: is a FIFO (named pipe), not a regular file" in text, answer
    assert elapsed < 1.0, f"refusal took {elapsed:.2f} s"
    with urllib.request.urlopen(comfy_server.url + "/system_stats", timeout=5) as r:
        assert r.status == 200
