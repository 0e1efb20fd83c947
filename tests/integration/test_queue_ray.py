"""``python -m runner queue ... --ray`` on a real local Ray with real ComfyUI servers (CPU, tiny SD3 +
LoRA + random CLIP): two Ray workers, each owning a ComfyUI whose output folder is its own temp
folder, fill per-class quotas into one central dataset elsewhere (nothing shared but Ray's object
store). Faults: a worker killed by ``ray.kill`` and a worker's ComfyUI SIGKILLed mid-run (Ray
restarts the worker and runs its blocks again), the driver SIGKILLed mid-run and the same command
run again (resume). No Ray or ComfyUI process may be left behind."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from dtgen.nodes.store import manifest
from dtgen.runner.local_server import servers_under
from PIL import Image
from support.datasets import check_consistent
from support.graphs import example_api
from support.pkg import ROOT

pytestmark = pytest.mark.integration
ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'ray==2.60.0' (tests/requirements.txt)")

RUNNER = [sys.executable, str(ROOT / "runner"), "queue"]
CLASSES = ("plate_clean", "bowl_clean")
QUOTA = 3


def small_workflow(path: Path) -> Path:
    graph = example_api("dtgen_sd35_lora", classes=",".join(CLASSES))
    for node in graph.values():
        if node["class_type"] == "EmptySD3LatentImage":
            node["inputs"]["width"] = node["inputs"]["height"] = 64
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
    path.write_text(json.dumps(graph))
    return path


def lines(ds):
    return manifest.read(ds).records


def check_dataset(ds: Path, quota: int = QUOTA) -> list[dict]:
    """Exact quotas, no item id written twice, every file matching its manifest line."""
    all_lines = lines(ds)
    ids = [r["id"] for r in all_lines]
    assert len(ids) == len(set(ids)), f"an item id was written twice: {Counter(ids).most_common(3)}"
    recs = list(check_consistent(ds).values())     # files on disk == records, metadata.jsonl agrees
    accepted = Counter(r["label"] for r in recs if r["decision"] == "accepted")
    assert accepted == {label: quota for label in CLASSES}, accepted
    for r in recs:
        path = ds / r["file"]
        assert path.stat().st_size == r["bytes"], r["file"]
        with Image.open(path) as img:
            img.load()
            assert img.size == (64, 64) and "prompt" in img.info     # the worker's PNG, as its ComfyUI wrote it
        if r.get("sha256"):
            import hashlib

            assert hashlib.sha256(path.read_bytes()).hexdigest() == r["sha256"]
    return recs


def tagged(key: str, value: str) -> list[int]:
    """Processes (not this one) whose environment holds ``key=value``: what a run started."""
    mark, found = f"{key}={value}".encode(), []
    for entry in Path("/proc").glob("[0-9]*"):
        if int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if mark in env:
            found.append(int(entry.name))
    return found


def left(key: str, value: str) -> str:
    """What ``tagged`` finds, as readable lines (for a failing assertion)."""
    out = []
    for pid in tagged(key, value):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
        except OSError:
            cmd = "?"
        out.append(f"{pid} {cmd}")
    return "; ".join(out)


def pgrep(pattern: str) -> list[str]:
    done = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True, check=False)
    return [ln for ln in done.stdout.splitlines() if ln.strip() and "pgrep" not in ln]


def wait_for(predicate, timeout: float, what: str, why=lambda: ""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} {why()}")


def model_args(model_dirs) -> list[str]:
    return [a for folder, paths in model_dirs.items() for p in paths for a in ("--model-dir", f"{folder}={p}")]


# ---------------------------------------------------------------------- the driver, killed and rerun
def test_a_killed_driver_resumes_when_run_again(comfyui_path, model_dirs, tmp_path):
    """The CLI with its own local Ray: SIGKILL it mid-run, the watchdog stops what its Ray started
    (no Ray, no ComfyUI left), the same command resumes: no item twice, exact quotas."""
    scratch, central = tmp_path / "scratch", tmp_path / "central"
    args = [small_workflow(tmp_path / "wf.json"), "--quota", QUOTA, "--dataset", "rq_resume", "--ray",
            "--ray-workers", 2, "--comfyui", comfyui_path, "--python", sys.executable, "--output-dir", central,
            "--ray-scratch", scratch, *model_args(model_dirs)]
    tag = uuid.uuid4().hex
    env = dict(os.environ, DTGEN_TEST_TAG=tag)
    ds = central / "rq_resume"

    def run(name):
        out, err = open(tmp_path / f"{name}.out", "w"), open(tmp_path / f"{name}.err", "w")
        return subprocess.Popen([*RUNNER, *map(str, args)], stdout=out, stderr=err, cwd=tmp_path, env=env)

    first = run("first")
    wait_for(lambda: (ds / "manifest.jsonl").is_file() and lines(ds) or first.poll() is not None, 300,
             "a first stored item")
    assert first.poll() is None, (tmp_path / "first.err").read_text()
    first.kill()
    first.wait()
    stored_before = {r["id"] for r in lines(ds)}
    assert stored_before
    wait_for(lambda: not tagged("DTGEN_TEST_TAG", tag), 40, "the killed driver's Ray and ComfyUI processes to end",
             lambda: left("DTGEN_TEST_TAG", tag))
    assert servers_under(scratch) == []

    second = run("second")
    rc = second.wait(timeout=600)
    out, err = (tmp_path / "second.out").read_text(), (tmp_path / "second.err").read_text()
    assert rc == 0, err
    recs = check_dataset(ds)
    assert stored_before <= {r["id"] for r in recs}
    assert out.splitlines()[0] == f"dataset: {ds}"
    assert "worker 0: " in out and "worker 1: " in out and f"{2 * QUOTA}/{2 * QUOTA} accepted" in err
    wait_for(lambda: not tagged("DTGEN_TEST_TAG", tag), 40, "the driver's Ray to end", lambda: left("DTGEN_TEST_TAG", tag))
    assert servers_under(scratch) == [] and pgrep(str(scratch)) == []
    # the finished run removed its workers' folders, and the killed run's (its driver is gone)
    assert list(scratch.iterdir()) == []


# ---------------------------------------------------------------------- a worker's ComfyUI killed twice
def comfyui_of(scratch: Path, slot: int, other_than=()) -> tuple[int, str] | None:
    """(pid, command line) of worker ``slot``'s ComfyUI (``--base-directory`` ending in /w<slot>)."""
    for pid, cmd in servers_under(scratch):
        args = cmd.split()
        if pid not in other_than and args[args.index("--base-directory") + 1].endswith(f"/w{slot}"):
            return pid, cmd
    return None


def first_answer(cmd: str, timeout: float = 120) -> None:
    """Until the ComfyUI of this command line answers HTTP (polled every 20 ms)."""
    import urllib.request

    args = cmd.split()
    url = f"http://127.0.0.1:{args[args.index('--port') + 1]}/system_stats"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{url} never answered")


@contextlib.contextmanager
def driver_after_first_item(tmp_path: Path, args: list, ds: Path):
    """``python -m runner queue`` on ``args`` (output to tmp_path/out and /err, its processes tagged),
    yielded as (process, tag) once it has stored a first item in ``ds``; killed on the way out when
    it still runs."""
    tag = uuid.uuid4().hex
    out, err = open(tmp_path / "out", "w"), open(tmp_path / "err", "w")
    run = subprocess.Popen([*RUNNER, *map(str, args)], stdout=out, stderr=err, cwd=tmp_path,
                           env=dict(os.environ, DTGEN_TEST_TAG=tag))
    try:
        wait_for(lambda: (ds / "manifest.jsonl").is_file() and lines(ds) or run.poll() is not None, 300,
                 "a first stored item")
        assert run.poll() is None, (tmp_path / "err").read_text()
        yield run, tag
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        out.close()
        err.close()


@pytest.mark.parametrize("workers, when", [(1, "0.5 s"), (1, "first answer"), (2, "0.5 s"), (2, "first answer")])
def test_a_replacement_comfyui_killed_while_starting_is_restarted_again(comfyui_path, model_dirs, tmp_path,
                                                                       workers, when):
    """The CLI, ``--ray-workers N``: once items are stored, kill -9 worker 0's ComfyUI; kill its
    replacement at once (0.5 s after it appears, or at its first HTTP answer). The worker is
    started again (restart 2; it was gone for good before), the quotas are met, each event is one line on stderr naming its
    cause, stdout holds only the summary, no workspace and no process is left."""
    scratch, central = tmp_path / "scratch", tmp_path / "central"
    # with 2 workers, worker 1 alone must not finish the run before worker 0's replacement is killed
    quota = QUOTA if workers == 1 else 25
    args = [small_workflow(tmp_path / "wf.json"), "--quota", quota, "--dataset", "rq_twice", "--ray",
            "--ray-workers", workers, "--comfyui", comfyui_path, "--python", sys.executable, "--output-dir", central,
            "--ray-scratch", scratch, *model_args(model_dirs)]
    ds = central / "rq_twice"
    with driver_after_first_item(tmp_path, args, ds) as (run, tag):
        first, _ = comfyui_of(scratch, 0)
        os.kill(first, signal.SIGKILL)
        second, cmd = wait_for(lambda: comfyui_of(scratch, 0, other_than={first}), 120, "the replacement ComfyUI")
        if when == "0.5 s":
            time.sleep(0.5)
        else:
            first_answer(cmd)
        os.kill(second, signal.SIGKILL)
        rc = run.wait(timeout=600)
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert rc == 0, stderr
    check_dataset(ds, quota)
    # one line per event, naming the cause; the restarts named at the end
    assert "Ray worker 0: its ComfyUI exited: killed by SIGKILL; restart 1 of 4 in 1 s" in stderr, stderr
    assert "; restart 1 of 4 in 1 s" in stderr and "; restart 2 of 4 in 2 s" in stderr, stderr
    if when == "0.5 s":
        assert "Ray worker 0: its ComfyUI exited during start-up: killed by SIGKILL; restart 2 of 4 in 2 s" in stderr
    if workers == 1:   # with 2, worker 1 may finish the run while worker 0 is still starting again
        assert "Ray worker 0 is up again (restart 2, http://127.0.0.1:" in stderr, stderr
    assert "Ray restarts used: worker 0: restart 1 after its ComfyUI exited: killed by SIGKILL" in stderr
    assert "restart 3 of" not in stderr and "is gone" not in stderr and "used up" not in stderr
    assert "comfy launch" not in stderr and "Traceback" not in stderr, stderr
    log = [ln for ln in stderr.splitlines() if ln.startswith("Ray's own messages go to ")]
    assert len(log) == 1
    # stdout: the summary only
    assert stdout.splitlines()[0] == f"dataset: {ds}", stdout
    assert all(ln.startswith(("dataset: ", "  ")) or " item(s) generated in " in ln for ln in stdout.splitlines()), stdout
    wait_for(lambda: not tagged("DTGEN_TEST_TAG", tag), 40, "the run's Ray to end", lambda: left("DTGEN_TEST_TAG", tag))
    assert servers_under(scratch) == [] and pgrep(str(scratch)) == []
    assert list(scratch.iterdir()) == []     # every workspace the run made, the killed servers' too


@pytest.mark.parametrize("fault", ["ctrl-c", "raylet", "gcs_server"])
def test_a_run_ended_by_ctrl_c_or_by_rays_death_leaves_nothing(comfyui_path, model_dirs, tmp_path, fault):
    """Once items are stored: SIGINT to the driver (exit 130), or SIGKILL to its Ray's raylet or GCS
    (exit 1 within seconds, one line: run the same command again). No workspace, no Ray or ComfyUI
    process is left; stdout is empty (no summary, none of Ray's dumps)."""
    scratch, central = tmp_path / "scratch", tmp_path / "central"
    args = [small_workflow(tmp_path / "wf.json"), "--quota", QUOTA, "--dataset", "rq_end", "--ray", "--ray-workers", 1,
            "--comfyui", comfyui_path, "--python", sys.executable, "--output-dir", central, "--ray-scratch", scratch,
            *model_args(model_dirs)]
    ds = central / "rq_end"
    with driver_after_first_item(tmp_path, args, ds) as (run, tag):
        if fault == "ctrl-c":
            run.send_signal(signal.SIGINT)
        else:
            kids = subprocess.run(["pgrep", "-P", str(run.pid), "-a"], capture_output=True, text=True).stdout
            core = [int(ln.split()[0]) for ln in kids.splitlines() if Path(ln.split()[1]).name == fault]
            assert len(core) == 1, kids
            os.kill(core[0], signal.SIGKILL)
        t0 = time.monotonic()
        rc = run.wait(timeout=120)
        seconds = time.monotonic() - t0
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert stdout == "" and "Traceback" not in stderr and "used up" not in stderr, (stdout, stderr)
    if fault == "ctrl-c":
        assert rc == 130 and "run the same command again to resume" in stderr, stderr
    else:
        what = {"raylet": "raylet", "gcs_server": "GCS"}[fault]
        assert rc == 1 and stderr.splitlines()[-1].startswith(f"error: Ray lost its {what} ("), stderr
        assert stderr.splitlines()[-1].endswith("): run the same command again to resume"), stderr
        assert seconds < 30, seconds
    wait_for(lambda: not tagged("DTGEN_TEST_TAG", tag), 40, "the run's Ray to end", lambda: left("DTGEN_TEST_TAG", tag))
    assert servers_under(scratch) == [] and pgrep(str(scratch)) == []
    assert list(scratch.iterdir()) == []
    check_consistent(ds)


# ---------------------------------------------------------------------- one Ray, two workers, reused
@pytest.fixture(scope="module")
def pool(comfyui_path, model_dirs, tmp_path_factory):
    """A local Ray (2 logical CPUs) and two workers, each owning a CPU ComfyUI in its own folder."""
    from dtgen.runner.ray.cluster import Cluster
    from dtgen.runner.ray.queue import RaySettings, WorkerPool

    scratch = tmp_path_factory.mktemp("ray-scratch")
    rs = RaySettings(workers=2, comfyui=str(comfyui_path), python=sys.executable, scratch_root=str(scratch),
                     model_dirs={k: [str(p) for p in v] for k, v in model_dirs.items()}, cpu=True)
    cluster = Cluster(num_cpus=2)
    with cluster:
        workers = WorkerPool(cluster.ray, rs, pending=2)
        try:
            workers.ready(300)
            yield workers, scratch
        finally:
            workers.close()
    wait_for(lambda: not tagged("DTGEN_RAY_RUN", cluster.token), 40, "the test's Ray to end",
             lambda: left("DTGEN_RAY_RUN", cluster.token))
    assert servers_under(scratch) == [] and pgrep(str(scratch)) == []


def queue_run(pool, tmp_path, dataset):
    from dtgen.runner.packs import local_sampler
    from dtgen.runner.progress import Progress
    from dtgen.runner.ray.queue import RayQueueRun
    from dtgen.runner.run import RunSettings
    from dtgen.runner.workflow import Workflow

    wf = Workflow.load(small_workflow(tmp_path / "wf.json"))
    wf.set_dataset(dataset)
    sampler = local_sampler(wf.sampler_inputs())
    settings = RunSettings(server="", targets={label: QUOTA for label in CLASSES}, output_dir=tmp_path / "central",
                           max_items=100, poll=0.1)
    log = io.StringIO()
    return RayQueueRun(wf, sampler, settings, pool, Progress(log, every=0)), log


def infos(workers):
    return ray.get([a.info.remote() for a in workers.actors], timeout=300)


def test_two_workers_fill_quotas_into_one_central_dataset(pool, tmp_path):
    workers, scratch = pool
    before = infos(workers)
    run, log = queue_run(workers, tmp_path, "rq_quota")
    result = run.run()
    ds = tmp_path / "central" / "rq_quota"
    recs = check_dataset(ds)
    assert result.items_done == len(recs)        # every item made came back and was stored, none twice
    # two ComfyUI servers with output folders of their own, none of them the central dataset's
    outputs = {Path(i["workspace"]) / "output" for i in before}
    assert len(outputs) == 2 and all(not ds.is_relative_to(o) and o.is_relative_to(scratch) for o in outputs)
    assert all((o / "dtgen_ray_scratch").is_dir() for o in outputs)
    assert not any(p for o in outputs for p in (o / "dtgen_ray_scratch").rglob("*.png"))   # all sent to the driver
    assert all(n > 0 for n in result.servers.values()) and len(result.servers) == 2, result.servers
    assert f"{2 * QUOTA}/{2 * QUOTA} accepted" in log.getvalue()


def run_with_fault(workers, tmp_path, dataset, fault):
    """Start a run in a thread, ``fault()`` once the central dataset has a stored item."""
    run, log = queue_run(workers, tmp_path, dataset)
    box = {}

    def target():
        try:
            box["result"] = run.run()
        except BaseException as e:   # reported by the test thread
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    ds = tmp_path / "central" / dataset
    wait_for(lambda: (ds / "manifest.jsonl").is_file() and lines(ds) or not thread.is_alive(), 300, "a stored item")
    assert thread.is_alive(), box
    fault()
    thread.join(600)
    assert not thread.is_alive() and "error" not in box, box.get("error")
    return check_dataset(ds), log.getvalue()


def test_a_worker_killed_mid_run_is_restarted(pool, tmp_path):
    workers, _ = pool
    old = infos(workers)
    recs, log = run_with_fault(workers, tmp_path, "rq_actor_kill",
                               lambda: ray.kill(workers.actors[0], no_restart=False))
    workers.ready(300)        # the run may have ended on worker 1 before worker 0 was back
    new = infos(workers)
    assert new[0]["pid"] != old[0]["pid"] and new[0]["server_pid"] != old[0]["server_pid"]   # restarted
    assert new[1]["pid"] == old[1]["pid"]
    assert "2 Ray workers" in log


def test_a_workers_comfyui_killed_mid_run_is_replaced(pool, tmp_path):
    workers, _ = pool
    old = infos(workers)
    victim = old[1]["server_pid"]
    recs, log = run_with_fault(workers, tmp_path, "rq_server_kill", lambda: os.killpg(victim, signal.SIGKILL))
    workers.ready(300)
    new = infos(workers)
    assert new[1]["server_pid"] != victim and new[1]["pid"] != old[1]["pid"]   # a new worker, a new ComfyUI
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)
