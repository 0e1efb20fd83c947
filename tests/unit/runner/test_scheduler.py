"""The queue client's scheduling against a stand-in ComfyUI (fake_comfy.py) that stores items with
the real DatasetWriter: quotas, resume, adoption, retries, a server that restarts or stays down.
Several servers are Ray workers (tests/integration/test_queue_ray.py)."""
from __future__ import annotations

import io
import threading
import time
from collections import Counter

import pytest
from dtgen.nodes.store import manifest
from dtgen.runner.packs import local_sampler
from dtgen.runner.progress import Progress
from dtgen.runner.scheduler import QueueRun, RunError, RunSettings
from dtgen.runner.workflow import Workflow
from support.pkg import ROOT

WORKFLOW = ROOT / "example_workflows" / "api" / "dtgen_sd35_lora.json"
TWO = "plate_clean,bowl_clean"


def make_run(server, out, classes=TWO, seed=0, **kw):
    wf = Workflow.load(WORKFLOW)
    wf.set_input(wf.sampler_id, "classes", classes)
    wf.set_input(wf.sampler_id, "seed", seed)
    wf.set_dataset(kw.pop("dataset", "ds"))
    sampler = local_sampler(wf.sampler_inputs())
    quota = kw.pop("quota", None)
    targets = {label: quota for label in sampler.labels} if quota is not None else None
    if targets:
        wf.set_writer_quota(quota)
    stream = io.StringIO()
    settings = RunSettings(server=server.url, targets=targets, poll=0.02, give_up_after=kw.pop("give_up_after", 2.0),
                           **kw)
    return QueueRun(wf, sampler, settings, Progress(stream, every=0)), stream


def stored(ds):
    return list(manifest.live(manifest.read(ds).records).values())


def test_quota_is_met_exactly_with_rejections(fakes, tmp_path):
    fake = fakes(reject=lambda i: i % 4 == 3)
    run, log = make_run(fake, tmp_path / "out", quota=3, output_dir=tmp_path / "out")
    result = run.run()
    recs = stored(tmp_path / "out" / "ds")
    assert Counter(r["label"] for r in recs if r["decision"] == "accepted") == {"plate_clean": 3, "bowl_clean": 3}
    assert any(r["decision"] == "rejected" for r in recs)
    assert len(fake.executed) == len(set(fake.executed))            # no index run twice
    assert sorted(fake.executed) == sorted(r["index"] for r in recs)
    # balanced: even indices are plates, odd ones bowls; 3 and 7 (bowls) were rejected and replaced
    assert sorted(r["index"] for r in recs if r["decision"] == "rejected") == [3, 7]
    assert sorted(fake.executed) == [0, 1, 2, 3, 4, 5, 7, 9]
    assert result.counts == {"plate_clean": {"accepted": 3, "rejected": 0},
                             "bowl_clean": {"accepted": 3, "rejected": 2}}
    assert "6/6 accepted" in log.getvalue() and "acceptance 75%" in log.getvalue()


def test_dataset_path_is_learnt_and_a_later_run_only_adds(fakes, tmp_path):
    fake = fakes()
    make_run(fake, None, quota=2)[0].run()                       # no output_dir: learnt from history
    first = list(fake.executed)
    make_run(fake, None, quota=4)[0].run()                       # resumes: finds the dataset in history
    assert sorted(first) == [0, 1, 2, 3]
    assert sorted(fake.executed) == list(range(8))                 # nothing queued twice


def test_prompts_left_by_a_killed_client_are_adopted(fakes, tmp_path):
    fake = fakes(delay=0.3)
    dead, _ = make_run(fake, None, quota=2, output_dir=tmp_path / "out", pending=3)
    dead.connect()
    dead._fill({}, set())                                         # queued, then the client "dies"
    assert len(fake.pending) + (fake.running is not None) == 3
    run, log = make_run(fake, None, quota=2, output_dir=tmp_path / "out", pending=3)
    run.run()
    assert sorted(fake.executed) == [0, 1, 2, 3]
    assert "earlier run are still queued" in log.getvalue()


def test_prompts_of_another_seed_are_not_adopted(fakes, tmp_path):
    """Prompts left queued by a run with another sampler seed make other items: a new run waits
    for nothing of theirs and plans its own indices from 0."""
    fake = fakes(delay=0.3)
    dead, _ = make_run(fake, None, quota=2, output_dir=tmp_path / "out", pending=3)
    dead.connect()
    dead._fill({}, set())
    run, log = make_run(fake, None, seed=1, items=4, output_dir=tmp_path / "out", pending=3)
    run.run()
    assert "earlier run are still queued" not in log.getvalue()
    by_seed = {}
    for r in stored(tmp_path / "out" / "ds"):
        by_seed.setdefault(r["metadata"]["base_seed"], set()).add(r["index"])
    assert by_seed[1] == {0, 1, 2, 3}   # all four of its own items, none taken for the seed-0 ones


def test_failed_prompts_are_retried_a_bounded_number_of_times(fakes, tmp_path):
    fake = fakes(fail_once={1})
    run, log = make_run(fake, None, items=4, output_dir=tmp_path / "out")
    result = run.run()
    assert sorted(r["index"] for r in stored(tmp_path / "out" / "ds")) == [0, 1, 2, 3]
    assert "item 1 failed" in log.getvalue() and "boom at 1" in log.getvalue() and "will retry" in log.getvalue()
    assert result.failed == []

    fake2 = fakes(fail_once={5})
    run, log = make_run(fake2, None, items=3, start=4, retries=0, output_dir=tmp_path / "out", dataset="ds2")
    result = run.run()
    assert result.failed == [5]
    assert sorted(r["index"] for r in stored(tmp_path / "out" / "ds2")) == [4, 6]
    assert "gave up after 1 tries" in log.getvalue()


def test_a_restarted_server_loses_nothing(fakes, tmp_path):
    """Killed and restarted with prompts queued: the client waits while it is down, and the items
    it forgot (queue and history are gone) are queued again; none is stored twice."""
    fake = fakes(delay=0.2)
    run, log = make_run(fake, None, quota=3, output_dir=tmp_path / "out", pending=2)
    lost = []

    def restart_when_busy():
        while len(fake.pending) < 1 or fake.running is None:
            time.sleep(0.005)
        lost.extend(i for e in [fake.running, *fake.pending] for i in e[3]["dtgen_queue"]["indices"])
        fake.restart(down=0.5)

    restarter = threading.Thread(target=restart_when_busy, daemon=True)
    restarter.start()
    result = run.run()
    restarter.join(5)
    assert lost, "prompts were on the server when it restarted"
    recs = stored(tmp_path / "out" / "ds")
    assert Counter(r["label"] for r in recs if r["decision"] == "accepted") == {"plate_clean": 3, "bowl_clean": 3}
    assert len(recs) == len({r["index"] for r in recs}) == 6
    assert set(lost) <= {r["index"] for r in recs}                 # the lost items were queued again
    assert f"{fake.url} stopped answering" in log.getvalue() and f"{fake.url} is back" in log.getvalue()
    assert result.servers == {fake.url: result.items_done}


def test_a_server_that_stays_down_stops_the_run_after_give_up_after(fakes, tmp_path):
    fake = fakes(delay=5.0)
    run, log = make_run(fake, None, quota=2, output_dir=tmp_path / "out", give_up_after=0.5)

    def stop_when_busy():
        while fake.running is None:
            time.sleep(0.005)
        fake.stop()

    threading.Thread(target=stop_when_busy, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(RunError, match=r"has not answered for 0.5 s; start it and run the same command again"):
        run.run()
    assert time.monotonic() - t0 < 10
    assert f"{fake.url} stopped answering; waiting for it (up to 0.5 s)" in log.getvalue()


def test_no_server_reachable_is_one_clear_error(tmp_path):
    from support.comfy_server import free_port

    class Down:
        url = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(RunError, match="cannot reach ComfyUI"):
        make_run(Down(), None, quota=1)[0].run()
