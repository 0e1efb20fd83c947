"""The pieces of ``--ray`` that need neither Ray nor ComfyUI: moving stored items between datasets
as encoded bytes (nodes/store/ingest.py: ScratchReader -> DatasetIngest), a Ray worker's block
against a stand-in ComfyUI (runner/ray/worker.py used as a plain object), and the command line
(refusals before Ray starts; the single-server path never imports ray)."""
from __future__ import annotations

import dataclasses
import io
import hashlib
import json
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np
import pytest
from dtgen.nodes.store import embeddings, manifest
from dtgen.nodes.store.ingest import DatasetIngest, ScratchReader
from dtgen.nodes.store.reconcile import reconcile
from dtgen.nodes.store.writer import DatasetWriter
from dtgen.runner.cli import main
from dtgen.runner.ray.worker import SCRATCH, ComfyWorker, WorkerSpec
from dtgen.runner.workflow import Workflow
from PIL import Image
from support.datasets import check_consistent, make_items
from support.pkg import BOOTSTRAP, ROOT

WORKFLOW = ROOT / "example_workflows" / "api" / "dtgen_sd35_lora.json"
COPY_PASTE = ROOT / "example_workflows" / "api" / "dtgen_copy_paste.json"
HYBRID = ROOT / "example_workflows" / "api" / "dtgen_hybrid_copy_paste.json"


def with_mask(item):
    imap = np.zeros(np.asarray(item.image).shape[:2], np.uint16)
    imap[2:5, 2:6] = 1
    return dataclasses.replace(item, instance_map=imap, instance_labels=(item.label,))


def scratch_with(tmp_path, indices, name="scratch", fmt="png", masked=()):
    items = [with_mask(it) if it.index in masked else it for it in make_items(indices)]
    with DatasetWriter(tmp_path / name, image_format=fmt) as w:
        w.write(items, models={"ckpt": "x"}, sampler_settings={"steps": 2})
    return tmp_path / name


def live(ds):
    return manifest.live(manifest.read(ds).records)


# ------------------------------------------------------------------------------------- ingest
@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_items_move_as_bytes_and_records_keep_the_writers_shape(tmp_path, fmt):
    scratch = scratch_with(tmp_path, range(6), fmt=fmt, masked={1, 4})
    written = live(scratch)
    files = {rid: (scratch / r["file"]).read_bytes() for rid, r in written.items()}
    masks = {rid: (scratch / r["mask"]).read_bytes() for rid, r in written.items() if r["mask"]}
    vectors = embeddings.load(scratch)

    items = ScratchReader(scratch).take()
    assert sorted(it.record["index"] for it in items) == list(range(6))
    assert all(not (scratch / r["file"]).exists() for r in written.values())   # read once, then deleted
    assert [r["id"] for r in live(scratch).values()] == list(written)          # the history stays

    central = tmp_path / "central"
    with DatasetIngest(central) as d:
        result = d.store(items)
    assert result.written == {"accepted": 4, "rejected": 2} and not result.refused
    stored = check_consistent(central)
    assert set(stored) == set(written)
    for rid, rec in stored.items():
        before = written[rid]
        assert set(rec) == set(before)                                          # the writer's fields
        assert {k: v for k, v in rec.items() if k not in ("file", "mask")} == \
            {k: v for k, v in before.items() if k not in ("file", "mask")}
        assert (central / rec["file"]).read_bytes() == files[rid]               # not re-encoded
        assert rec["bytes"] == len(files[rid])
        with Image.open(central / rec["file"]) as img:
            img.load()
        if rid in masks:
            assert rec["mask"] == f"masks/{rec['label_dir']}/{rec['file'].rsplit('/', 1)[1].rsplit('.', 1)[0]}.png"
            assert (central / rec["mask"]).read_bytes() == masks[rid]
    got = embeddings.load(central)
    assert set(got) == set(vectors) and all(np.array_equal(got[k], vectors[k]) for k in got)
    assert reconcile(central).changed is False


def test_duplicates_are_skipped_and_quotas_count_like_the_writer(tmp_path):
    central = tmp_path / "central"
    with DatasetIngest(central) as d:
        first = d.store(ScratchReader(scratch_with(tmp_path, range(4), "a"), drop_files=False).take())
        again = d.store(ScratchReader(tmp_path / "a").take())                 # the same items once more
    assert first.written == {"accepted": 3, "rejected": 1}
    assert again.written == {"accepted": 0, "rejected": 0} and sum(again.skipped_duplicate.values()) == 4

    # quota 2 per class: accepted items past it are not stored, rejected ones are
    quota_ds = tmp_path / "quota"
    with DatasetIngest(quota_ds, quotas={"cat": 2, "dog": 2, "tea cup": 2}) as d:
        result = d.store(ScratchReader(scratch_with(tmp_path, range(12), "b")).take())
    accepted = Counter(r["label"] for r in live(quota_ds).values() if r["decision"] == "accepted")
    assert accepted == {"cat": 2, "dog": 2, "tea cup": 2}
    assert result.skipped_quota == 9 - 6 and result.written["rejected"] == 3


def test_damaged_items_are_refused_and_a_killed_ingest_is_repaired(tmp_path):
    items = ScratchReader(scratch_with(tmp_path, range(3))).take()
    items[0] = dataclasses.replace(items[0], image=items[0].image[:-5])          # cut in transit
    central = tmp_path / "central"
    with DatasetIngest(central) as d:
        result = d.store(items)
    assert [rid for rid, _ in result.refused] == [items[0].record["id"]]
    assert "bytes" in result.refused[0][1] and sum(result.written.values()) == 2
    assert items[0].record["id"] not in live(central)

    # a kill between the image and its manifest line: the next open parks the image in orphans/
    more = ScratchReader(scratch_with(tmp_path, range(3, 5), "more")).take()

    class Boom(BaseException):
        pass

    with DatasetIngest(central) as d:
        real = manifest.append
        manifest.append = lambda *a, **k: (_ for _ in ()).throw(Boom())
        try:
            with pytest.raises(Boom):
                d.store(more)
        finally:
            manifest.append = real
    with DatasetIngest(central) as d:
        assert d.reconciled.orphans          # the images without a line
        assert d.store(more).written == {"accepted": 1, "rejected": 1}
    check_consistent(central)


def test_scratch_reader_hands_each_block_its_own_items_in_any_order(tmp_path):
    scratch = scratch_with(tmp_path, range(4))
    reader = ScratchReader(scratch)
    assert [it.record["index"] for it in reader.take([2, 3])] == [2, 3]
    with DatasetWriter(scratch) as w:
        w.write(make_items([4, 5]))
    assert sorted(it.record["index"] for it in reader.take([4, 0])) == [0, 4]
    assert [it.record["index"] for it in reader.take([1])] == [1]
    assert [it.record["index"] for it in reader.take()] == [5]
    assert reader.take() == []


# ------------------------------------------------------------------------------------- worker
def block_of(wf, indices, run="r1"):
    return {"run": run, "graph": wf.item_graph(indices[0], len(indices), copy_paste=False, writer_quota=0),
            "indices": list(indices), "writer": wf.writer_id, "dataset": "central_name"}


def small_wf():
    wf = Workflow.load(WORKFLOW)
    wf.set_input(wf.sampler_id, "classes", "plate_clean,bowl_clean")
    return wf


def test_a_worker_runs_blocks_into_its_scratch_dataset_and_returns_bytes(fakes, tmp_path):
    fake = fakes(reject=lambda i: i == 1)
    worker = ComfyWorker(WorkerSpec(url=fake.url), slot=3)
    wf = small_wf()
    out = worker.run_block(block_of(wf, [0, 1, 2]))
    assert out["worker"] == 3 and "error" not in out
    items = out["items"]
    assert sorted(it.record["index"] for it in items) == [0, 1, 2]
    assert [it.record["decision"] for it in sorted(items, key=lambda it: it.record["index"])] == \
        ["accepted", "rejected", "accepted"]
    scratch = {r["file"] for r in live(tmp_path / "out" / SCRATCH / f"r1-w3-{worker_pid()}-0" / "central_name").values()}
    assert len(scratch) == 3 and not any((tmp_path / "out").rglob("*.png"))   # files handed over, history kept
    for it in items:
        assert len(it.image) == it.record["bytes"] and hashlib.sha256(it.image).hexdigest()

    # the same index again (a retried block): a fresh scratch dataset, so the writer does not skip it
    again = worker.run_block(block_of(wf, [2, 3]))
    assert sorted(it.record["index"] for it in again["items"]) == [2, 3]
    assert (tmp_path / "out" / SCRATCH / f"r1-w3-{worker_pid()}-1" / "central_name" / "manifest.jsonl").is_file()

    # a failing graph comes back as an error (the driver retries it), a refused one as rejected
    failing = fakes(fail_once={7})
    assert "boom at 7" in ComfyWorker(WorkerSpec(url=failing.url)).run_block(block_of(wf, [7]))["error"]
    worker.close()
    assert not (tmp_path / "out" / SCRATCH).exists()


def worker_pid():
    import os

    return os.getpid()


def test_a_refused_graph_comes_back_as_one_line(tmp_path):
    from fake_comfy import FakeComfy

    fake = FakeComfy(tmp_path / "out", validate=lambda g: {"7": {"class_type": "KSampler", "errors": [
        {"type": "value_smaller_than_min", "message": "Value -4 smaller than min of 1", "details": "steps",
         "extra_info": {"input_name": "steps"}}]}})
    try:
        out = ComfyWorker(WorkerSpec(url=fake.url)).run_block(block_of(small_wf(), [0]))
    finally:
        fake.stop()
    assert out["rejected"] == f"{fake.url} rejected the workflow: node 7 (KSampler) input steps: Value -4 smaller " \
                              "than min of 1"


# ------------------------------------------------------------------------------------- command line
def run_cli(capsys, *args):
    try:
        code = main(["queue", *map(str, args)])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args, message", [
    ([WORKFLOW, "--quota", 1, "--server", "http://a:1", "--server", "http://b:1"],
     "error: --server given 2 times: several ComfyUI servers are Ray workers; add --ray"),
    ([COPY_PASTE, "--quota", 1, "--ray"], "has no DTGenPromptSampler; Ray workers run blocks of the sampler's items"),
    ([HYBRID, "--quota", 2, "--ray"], "error: --ray runs the prompt sampler's items; the copy-paste branch plans"),
])
def test_what_ray_cannot_run_is_refused_before_ray_starts(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 1 and out == "" and err.count("\n") == 1 and message in err, err


def test_the_single_server_client_never_imports_ray(fakes, tmp_path):
    fake = fakes()
    code = BOOTSTRAP + (
        "import sys\n"
        "from dtgen.runner.cli import main\n"
        f"rc = main(['queue', {str(WORKFLOW)!r}, '--items', '2', '--server', {fake.url!r}, '--dataset', 'noray'])\n"
        "assert rc == 0, rc\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
    assert sorted(r["index"] for r in live(tmp_path / "out" / "noray").values()) == [0, 1]


def test_ray_options_parse_into_settings():
    from dtgen.runner.cli import Parser, add_queue_args, ray_settings

    p = Parser(prog="x")
    add_queue_args(p)
    args = p.parse_args([str(WORKFLOW), "--quota", "1", "--ray", "--ray-workers", "3", "--model-dir", "checkpoints=/m/a",
                         "--model-dir", "checkpoints=/m/b", "--model-dir", "open_clip=/m/c", "--ray-max-restarts", "2"])
    rs = ray_settings(args)
    assert rs.address is None and rs.workers == 3 and rs.max_restarts == rs.max_task_retries == 2
    assert rs.model_dirs == {"checkpoints": ["/m/a", "/m/b"], "open_clip": ["/m/c"]}
    args = p.parse_args([str(WORKFLOW), "--quota", "1", "--ray", "auto", "--server", "http://127.0.0.1:8188"])
    assert ray_settings(args).address == "auto" and ray_settings(args).servers == ["http://127.0.0.1:8188"]
    assert json.dumps(dataclasses.asdict(rs))   # travels to the workers as plain data


# ------------------------------------------------------------------------------------- with Ray
@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray", reason="ray is not installed (pip install 'ray==2.60.0')")
    from dtgen.runner.ray.cluster import Cluster

    with Cluster(num_cpus=2) as c:
        yield c


def ray_run(cluster, rs, dataset, output_dir, shared=False, log=None):
    """A RayQueueRun of quota 4 per class on a new pool: (records, result, log)."""
    from dtgen.runner.packs import local_sampler
    from dtgen.runner.progress import Progress
    from dtgen.runner.ray.queue import RayQueueRun, WorkerPool
    from dtgen.runner.run import RunSettings

    wf = small_wf()
    wf.set_dataset(dataset)
    sampler = local_sampler(wf.sampler_inputs())
    settings = RunSettings(server="", targets={label: 4 for label in sampler.labels}, output_dir=output_dir,
                           poll=0.05, max_items=100)
    log = log or io.StringIO()
    pool = WorkerPool(cluster.ray, rs, pending=2, driver_node=cluster.node_id(),
                      shared_output=str(output_dir) if shared else None)
    try:
        infos = pool.ready(60)
        result = RayQueueRun(wf, sampler, settings, pool, Progress(log, every=0), shared_output=shared).run()
    finally:
        pool.close()
    assert {i["url"] for i in infos} == set(rs.servers)
    ds = output_dir / dataset
    recs = list(live(ds).values())
    assert Counter(r["label"] for r in recs if r["decision"] == "accepted") == settings.targets
    assert len(recs) == len({r["index"] for r in recs})
    assert sum(result.servers.values()) == result.items_done
    assert "8/8 accepted" in log.getvalue()
    check_consistent(ds)
    return recs, result, log.getvalue()


def test_the_driver_fills_quotas_from_two_ray_workers(cluster, fakes, tmp_path):
    """A real local Ray, two workers on stand-in servers: exact quotas, each index stored once,
    both workers used; first with the servers' outputs apart from the central dataset (the items
    travel through Ray), then with a shared output folder (the servers write the dataset)."""
    from dtgen.runner.ray.queue import RaySettings

    servers = [fakes(reject=lambda i: i % 5 == 4, delay=0.05) for _ in range(2)]
    rs = RaySettings(servers=[s.url for s in servers])
    recs, result, log = ray_run(cluster, rs, "rayds", tmp_path / "central")
    assert any(r["decision"] == "rejected" for r in recs)    # rejected ones travel too, and are replaced
    assert result.items_done == len(recs)                    # every item made came back, none lost
    assert all(result.servers.values()) and "2 Ray workers" in log, result.servers
    assert not any((tmp_path / "out").rglob("*.png"))         # the servers' copies were handed over
    recs, result, _ = ray_run(cluster, rs, "shared", tmp_path / "out", shared=True)
    assert all(result.servers.values())
    assert not any((tmp_path / "out" / SCRATCH).rglob("shared"))


def test_a_worker_out_of_restarts_leaves_the_run_to_the_others(cluster, fakes, tmp_path):
    """Its server vanishes: the worker exits, Ray has no restart left (--ray-max-restarts 0), the
    driver plans its blocks again on the other worker."""
    from dtgen.runner.ray.queue import RaySettings

    doomed, steady = fakes(delay=0.3), fakes(delay=0.05)
    rs = RaySettings(servers=[doomed.url, steady.url], max_restarts=0, max_task_retries=0, unreachable_after=1.0)

    def stop_when_busy():
        while doomed.running is None:
            time.sleep(0.005)
        doomed.stop()

    threading.Thread(target=stop_when_busy, daemon=True).start()
    recs, result, log = ray_run(cluster, rs, "lost", tmp_path / "central")
    assert f"Ray worker 0 ({doomed.url}) is gone" in log and "planned again on the other workers" in log
    assert log.count("is gone") == 1 and "used up" not in log, log   # one line per event, naming its cause
    assert "has used its 0 restart(s)" in log and "comfy launch" not in log.split("is gone", 1)[0]
    assert result.servers[f"worker 1 ({steady.url})"] == len(recs)


def test_a_worker_whose_restart_fails_to_start_is_restarted_again(cluster, fakes, tmp_path):
    """The server of the only worker vanishes mid-run and stays away past the first restart: that
    restart's start fails (a start-up failure, which Ray itself would not restart), the next one
    comes up after the back-off, the quotas are met; each event one line, the restarts named."""
    from dtgen.runner.ray.queue import RaySettings

    flaky = fakes(delay=0.2)
    rs = RaySettings(servers=[flaky.url], max_restarts=3, unreachable_after=0.5)
    stream = io.StringIO()

    def away_when_busy():
        while flaky.running is None:
            time.sleep(0.005)
        # back on the same port (its queue and history lost) once the first restart failed to start
        flaky.restart(down=0.5, until=lambda: "restart 2 of 3" in stream.getvalue())

    threading.Thread(target=away_when_busy, daemon=True).start()
    t0 = time.monotonic()
    recs, result, log = ray_run(cluster, rs, "flaky", tmp_path / "central", log=stream)
    label = f"worker 0 ({flaky.url})"
    assert f"Ray {label}: cannot reach ComfyUI at {flaky.url}" in log and "restart 1 of 3 in 1 s" in log, log
    assert "restart 2 of 3 in 2 s" in log and f"Ray {label} is up again (restart 2, {flaky.url})" in log, log
    assert "restart 3 of 3" not in log and "is gone" not in log
    assert result.items_done == len(recs) and time.monotonic() - t0 > 3   # the back-off was waited


def test_the_run_stops_only_when_no_worker_can_be_brought_back_and_names_the_restarts(cluster, fakes, tmp_path):
    """The only worker's server vanishes for good: one restart (--ray-max-restarts 1) whose start
    fails, then the run stops with one line naming the last event and the restart used."""
    from dtgen.runner.packs import local_sampler
    from dtgen.runner.progress import Progress
    from dtgen.runner.ray.queue import RayQueueRun, RaySettings, WorkerPool
    from dtgen.runner.run import RunError, RunSettings

    doomed = fakes(delay=0.3)
    rs = RaySettings(servers=[doomed.url], max_restarts=1, unreachable_after=0.5)

    def stop_when_busy():
        while doomed.running is None:
            time.sleep(0.005)
        doomed.stop()

    threading.Thread(target=stop_when_busy, daemon=True).start()
    wf = small_wf()
    wf.set_dataset("doomed")
    sampler = local_sampler(wf.sampler_inputs())
    settings = RunSettings(server="", targets={label: 4 for label in sampler.labels}, output_dir=tmp_path / "c",
                           poll=0.05, max_items=100)
    log = io.StringIO()
    pool = WorkerPool(cluster.ray, rs, pending=2, driver_node=cluster.node_id())
    try:
        pool.ready(60)
        with pytest.raises(RunError) as e:
            RayQueueRun(wf, sampler, settings, pool, Progress(log, every=0)).run()
    finally:
        pool.close()
    label = f"worker 0 ({doomed.url})"
    message = str(e.value)
    assert message.startswith(f"no Ray worker is left. Ray {label} is gone: cannot reach ComfyUI at {doomed.url}")
    assert "it has used its 1 restart(s) (--ray-max-restarts)" in message
    assert f"Restarts used: {label}: restart 1 after cannot reach ComfyUI at {doomed.url}" in message
    assert message.endswith("; run the same command again to resume") and "\n" not in message
    assert log.getvalue().count("restart 1 of 1 in 1 s") == 1 and log.getvalue().count("is gone") == 1


def test_a_comfyui_failing_at_start_up_is_restarted(cluster, tmp_path):
    """A ComfyUI that exits with an error while starting is started again (it may be a GPU the last
    one still held): each start one line with the exception line of its log (not "Setting ..."),
    then the run's last line names the restart used; the pool's workspace folder is removed."""
    from dtgen.runner.ray.queue import RaySettings, WorkerPool
    from dtgen.runner.run import RunError

    comfy = tmp_path / "ComfyUI"
    (comfy / "comfy").mkdir(parents=True)
    (comfy / "main.py").write_text("print('Setting user directory to: x')\nraise RuntimeError('CUDA out of memory')\n")
    rs = RaySettings(workers=1, comfyui=str(comfy), python=sys.executable, scratch_root=str(tmp_path / "s"),
                     max_restarts=1, cpu=True)
    pool = WorkerPool(cluster.ray, rs, pending=1)
    try:
        with pytest.raises(RunError) as e:
            pool.ready(120)
    finally:
        pool.close()
    text, events = str(e.value), pool.events
    why = "its ComfyUI exited during start-up: RuntimeError: CUDA out of memory (log: "
    assert events[0].startswith(f"Ray worker 0: {why}") and events[0].endswith("; restart 1 of 1 in 1 s"), events
    assert text.startswith(f"no Ray worker is left. Ray worker 0 is gone: {why}") and "\n" not in text, text
    assert "it has used its 1 restart(s)" in text and text.endswith(
        "Restarts used: worker 0: restart 1 after its ComfyUI exited during start-up: RuntimeError: CUDA out of memory")
    assert list((tmp_path / "s").iterdir()) == []


def test_the_back_off_doubles_up_to_half_a_minute():
    from dtgen.runner.ray.queue import backoff

    assert [backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_workspaces_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    """The owner file names the driver (host, pid, start time): a folder whose driver is gone is
    removed by the next run; a live one's, and a folder without an owner file, stay."""
    from dtgen.runner.ray.cluster import OWNER, claim_workspaces, remove_stale_workspaces

    mine = claim_workspaces(tmp_path, "live")
    (mine / "w0").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "dtgen-ray-dead"
    (stale / "w0" / "output").mkdir(parents=True)
    owner = json.loads((mine / OWNER).read_text())
    (stale / OWNER).write_text(json.dumps(dict(owner, pid=dead.pid)))
    reused = tmp_path / "dtgen-ray-reused"      # the pid lives, but it is another process (start time)
    reused.mkdir()
    (reused / OWNER).write_text(json.dumps(dict(owner, start="1")))
    foreign = tmp_path / "dtgen-ray-foreign"
    foreign.mkdir()
    assert sorted(p.name for p in remove_stale_workspaces(tmp_path)) == ["dtgen-ray-dead", "dtgen-ray-reused"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dtgen-ray-foreign", "dtgen-ray-live"]


@pytest.mark.parametrize("address, why", [("127.0.0.1:1", "Connection refused"),
                                          ("no-such-host.invalid:6379", "no such host")])
def test_a_ray_address_where_nothing_answers_is_one_line_within_seconds(tmp_path, address, why):
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "runner"), "queue", str(WORKFLOW), "--quota", "1",
                           "--ray", address, "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    seconds = time.monotonic() - t0
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and done.stdout == "", done.stderr
    assert last == (f"error: --ray {address}: no Ray cluster answers there ({why}); start one (`ray start --head` "
                    "on that machine) or pass its address (host:6379, ray://host:10001, auto)"), done.stderr
    assert "Traceback" not in done.stderr and seconds < 60, seconds


def test_ray_is_an_optional_extra_never_a_requirement():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["ray"] == ["ray==2.60.0"]
    assert "ray==2.60.0" in project["optional-dependencies"]["dev"]
    assert "ray==2.60.0" in (ROOT / "tests" / "requirements.txt").read_text().split()
    assert "ray" not in (ROOT / "requirements.txt").read_text()
    assert not any(d.startswith("ray") for d in project["dependencies"])
