"""The one run loop (runner/loop.py) over a stand-in executor: the interface is all it needs
(slots, submit, poll, wait, cancel, in_flight, stalled, status), whatever runs the prompts."""
from __future__ import annotations

import io

from dtgen.runner.loop import Outcome, RunLoop
from dtgen.runner.packs import local_sampler
from dtgen.runner.progress import Progress
from dtgen.runner.run import RunSettings
from dtgen.runner.workflow import Workflow
from support.pkg import ROOT

WORKFLOW = ROOT / "example_workflows" / "api" / "dtgen_sd35_lora.json"


class ListExecutor:
    """Runs each job at once: item 2 fails once, item 3 is lost once; nothing is stored."""
    servers = ["here"]
    shared_dataset = True

    def __init__(self, pending=2):
        self.pending, self.jobs, self.graphs, self.cancelled = pending, [], [], 0
        self.failed_once, self.lost_once = set(), set()

    def start(self, run):
        self.run = run

    def slots(self):
        while len(self.jobs) < self.pending:
            yield None

    def submit(self, job, graph, slot):
        self.jobs.append(job)
        self.graphs.append(graph)
        return True

    def poll(self):
        out = []
        for job in self.jobs:
            first = job.indices[0]
            if first == 2 and first not in self.failed_once:
                self.failed_once.add(first)
                out.append(Outcome(job, "the stand-in", "here", error="boom"))
            elif first == 3 and first not in self.lost_once:
                self.lost_once.add(first)
                out.append(Outcome(job, "the stand-in", "here", lost=True))
            else:
                out.append(Outcome(job, "the stand-in", "here"))
        self.jobs = []
        return out

    def wait(self, seconds):
        pass

    def cancel(self):
        self.cancelled += 1
        return 0

    def in_flight(self):
        return list(self.jobs)

    def stalled(self):
        return True

    def status(self):
        return len(self.jobs), "1 stand-in"


def test_one_loop_over_any_executor_plans_retries_and_replans_lost_items():
    wf = Workflow.load(WORKFLOW)
    wf.set_dataset("ds")
    sampler = local_sampler(wf.sampler_inputs())
    log = io.StringIO()
    executor = ListExecutor()
    run = RunLoop(wf, sampler, RunSettings(server="", items=5, poll=0), executor, Progress(log, every=0))
    result = run.run()
    assert result.items_done == 5 and result.failed == [] and result.servers == {"here": 5}
    assert "item 2 failed on the stand-in: boom (will retry)" in log.getvalue()
    started = [g[wf.sampler_id]["inputs"]["start_index"] for g in executor.graphs]
    assert sorted(started) == [0, 1, 2, 2, 3, 3, 4]   # 2 tried again, 3 planned again
    assert "5/5 items" in log.getvalue() and "1 stand-in" in log.getvalue()
