"""Queue a DTGen workflow on one ComfyUI server until the per-class quotas (or N items) are in the
dataset: the run loop (loop.py) over ``HttpExecutor``. Several servers (GPUs, nodes) are Ray's job:
``--ray`` (runner/ray/queue.py) runs the same loop over Ray workers.

Sources: the prompt sampler's SD images (``sd``, stored as source ``generated``) are planned by
the loop, index by index. A copy-paste branch (``DTGenCopyPaste`` -> its own writer) runs in the
node's resume mode: the node claims the items the dataset lacks (claims keep concurrent prompts
apart) and reports "done" when every class has its copy-paste quota. The client rides it along with
the SD prompts, queues the branch alone once SD is full, and takes "done" for full only from a
prompt that no other copy-paste prompt overlapped (else one more prompt checks). Each source's quota
counts its own images only.

The server keeps ``pending`` prompts queued (--pending; ``waiting``: the server's own queue).
Prompts an earlier run left on the server are adopted instead of queued twice, and its dataset is
found in the server's history. A server that stops answering is waited for (``give_up_after``
seconds); prompts lost with its restart are queued again.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path

from .api import (
    ComfyAPI,
    ComfyError,
    ServerUnreachable,
    execution_error,
    writer_dataset_path,
)
from .loop import Outcome, RunLoop
from .planner import Job
from .progress import Progress
from .run import RunError, RunResult, RunSettings, lost_when_unseen, why_short
from .workflow import COPY_PASTE as COPY_PASTE_NODE
from .workflow import SAMPLER, WRITER, Workflow

__all__ = ["HttpExecutor", "QueueRun", "RunError", "RunResult", "RunSettings", "copy_paste_report", "why_short"]

MARK = "dtgen_queue"          # key in a prompt's extra_data: which run and items it belongs to
HISTORY_LOOKBACK = 200        # recent history entries searched for an earlier run's dataset path


def copy_paste_report(entry: dict, node_id: str) -> tuple[int, bool]:
    """(items made, "done": every class has its quota) from the copy-paste node's history output
    ``dtgen_copy_paste`` (``nodes/adapters/copy_paste.py``); nothing reported counts as 0, not done."""
    output = (entry.get("outputs") or {}).get(str(node_id)) or {}
    report = output.get("dtgen_copy_paste")
    if isinstance(report, list) and report and isinstance(report[0], dict):
        return int(report[0].get("made") or 0), bool(report[0].get("done"))
    return 0, False


class HttpExecutor:
    """One ComfyUI server over its HTTP API: ``pending`` prompts kept queued."""
    shared_dataset = True

    def __init__(self, url: str, pending: int, give_up_after: float):
        self.api = ComfyAPI(url)
        self.url = self.api.url
        self.servers = [self.url]
        self.pending, self.give_up_after = pending, give_up_after
        self.client_id = str(uuid.uuid4())
        self.jobs: dict[str, Job] = {}          # prompt id -> job, on the server
        self.failing_since: float | None = None  # since when the server does not answer
        self.run: RunLoop | None = None

    # ------------------------------------------------------------------------------------- setup
    def start(self, run: RunLoop) -> None:
        self.run = run
        try:
            self.api.system_stats()
            if run.sampler_on and not self.api.has_node(SAMPLER):
                raise RunError(f"ComfyUI at {self.url} has no DTGen nodes: install this pack in its "
                               "custom_nodes folder and restart it")
            if run.cp_on and not self.api.has_node(COPY_PASTE_NODE):
                raise RunError(f"ComfyUI at {self.url} has no {COPY_PASTE_NODE} node: update the DTGen pack in its "
                               "custom_nodes folder and restart it")
        except ComfyError as e:   # unreachable too: one line saying what to do
            raise RunError(str(e)) from None
        self._adopt()
        if run.view is None:
            self._discover_dataset()

    def _adopt(self) -> None:
        run = self.run
        running, waiting = self.api.queue()
        n = 0
        for entry in running + waiting:
            mark = (entry[3] if len(entry) > 3 and isinstance(entry[3], dict) else {}).get(MARK) or {}
            indices, copy_paste = tuple(mark.get("indices") or ()), bool(mark.get("copy_paste"))
            if mark.get("dataset") != run.dataset:
                continue
            if indices and (mark.get("pack_hash"), mark.get("stream")) != (run.pack_hash, run.stream):
                continue   # other items (another seed, pack or classes): not this run's
            if not indices and not (copy_paste and run.cp_on):
                continue
            job = Job(indices, prompt_id=entry[1], server=self.url, copy_paste=copy_paste)
            self.jobs[entry[1]] = job
            run.adopt(job)
            n += 1
        if n:
            run.progress.message(f"{self.url}: {n} prompt(s) of an earlier run are still queued; waiting for "
                                 "them instead of queueing their items again")

    def _discover_dataset(self) -> None:
        """Where an earlier run of this dataset was written, from the server's history, so a resumed
        run knows what is done before it queues anything."""
        run = self.run
        for entry in reversed(list(self.api.get(f"/history?max_items={HISTORY_LOOKBACK}").values())):
            prompt = entry.get("prompt") or []
            mark = (prompt[3] if len(prompt) > 3 and isinstance(prompt[3], dict) else {}).get(MARK) or {}
            if mark.get("dataset") != run.dataset:
                continue
            graph = prompt[2] if len(prompt) > 2 and isinstance(prompt[2], dict) else {}
            writers = [k for k, n in graph.items() if isinstance(n, dict) and n.get("class_type") == WRITER]
            for writer in writers or run.wf.writer_ids:   # that run's writers (another graph may have other ids)
                reported = writer_dataset_path(entry, writer)
                if reported and (Path(reported) / "manifest.jsonl").is_file():
                    run.use_dataset(reported)
                    return

    # ------------------------------------------------------------------------------- executor
    def slots(self):
        while self.failing_since is None and len(self.jobs) < self.pending:
            yield None

    def submit(self, job: Job, graph: dict, slot=None) -> bool:
        run = self.run
        extra = {MARK: {"dataset": run.dataset, "pack_hash": run.pack_hash, "stream": run.stream,
                        "indices": list(job.indices), "copy_paste": job.copy_paste}}
        try:
            pid = self.api.queue_prompt(graph, self.client_id, extra)
        except ServerUnreachable:
            self._failing()
            return False
        except ComfyError as e:
            run.lost(job)
            raise RunError(str(e)) from None
        job.prompt_id, job.server, job.polls_unseen = pid, self.url, 0
        self.jobs[pid] = job
        return True

    def poll(self) -> list[Outcome]:
        out = []
        try:
            running, waiting = self.api.queue()
            on_server = {e[1] for e in running + waiting}
            for pid, job in list(self.jobs.items()):
                if pid in on_server:
                    job.polls_unseen = 0
                    continue
                entry = self.api.history(pid)
                if entry is None:
                    job.polls_unseen += 1
                    if lost_when_unseen(job.polls_unseen):
                        del self.jobs[pid]
                        out.append(Outcome(job, self.url, self.url, lost=True))
                    continue
                del self.jobs[pid]
                out.append(self._outcome(job, entry))
        except ServerUnreachable:
            self._failing()
            return out
        except ComfyError as e:
            raise RunError(str(e)) from None
        if self.failing_since is not None:
            self.run.progress.message(f"{self.url} is back")
        self.failing_since = None
        return out

    def _outcome(self, job: Job, entry: dict) -> Outcome:
        error = execution_error(entry)
        if error is not None:
            return Outcome(job, self.url, self.url, error=error)
        wf = self.run.wf
        writers = ([wf.writer_id] if job.indices else []) + (wf.copy_paste_writer_ids if job.copy_paste else [])
        return Outcome(job, self.url, self.url, dataset_paths=[writer_dataset_path(entry, w) for w in writers],
                       copy_paste=copy_paste_report(entry, wf.copy_paste_id) if job.copy_paste else None)

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def in_flight(self) -> list[Job]:
        return list(self.jobs.values())

    def stalled(self) -> bool:
        return True

    def status(self) -> tuple[int, str]:
        return len(self.jobs), "0 servers" if self.failing_since is not None else "1 server"

    def _failing(self) -> None:
        """The server does not answer: wait for it (its queue may survive), up to give_up_after."""
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
            self.run.progress.message(f"{self.url} stopped answering; waiting for it (up to "
                                      f"{self.give_up_after:g} s)")
        elif now - self.failing_since >= self.give_up_after:
            raise RunError(f"ComfyUI at {self.url} has not answered for {self.give_up_after:g} s; start it "
                           "and run the same command again to resume")

    def cancel(self) -> int:
        """Remove this run's not-yet-started prompts from the server's queue."""
        if not self.jobs or self.failing_since is not None:
            return 0
        try:
            _, waiting = self.api.queue()
            ours = [e[1] for e in waiting if e[1] in self.jobs]
            if ours:
                self.api.delete_waiting(ours)
                for pid in ours:
                    self.run.lost(self.jobs.pop(pid))
            return len(ours)
        except ComfyError:
            return 0


class QueueRun(RunLoop):
    """The run loop on one ComfyUI server."""

    def __init__(self, workflow: Workflow, sampler, settings: RunSettings, progress: Progress | None = None):
        executor = HttpExecutor(settings.server, settings.pending, settings.give_up_after)
        dataset_dir = Path(settings.output_dir) / workflow.dataset_name if settings.output_dir is not None else None
        super().__init__(workflow, sampler, settings, executor, progress, dataset_dir)
        self.api, self.url = executor.api, executor.url
