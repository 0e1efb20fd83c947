"""Queue a DTGen workflow on one or more ComfyUI servers until the per-class quotas (or N items)
are in the dataset.

Each server keeps ``pending`` prompts queued. The dataset's manifest is the source of truth:
what is stored is never queued again, so a killed client resumes where it stopped, and prompts an
earlier run left on a server are adopted instead of queued twice. A server that stops answering
for ``dead_after`` seconds loses nothing: its unfinished items go back to the others.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .api import (
    ComfyAPI,
    ComfyError,
    ServerUnreachable,
    execution_error,
    writer_dataset_path,
)
from .dataset_view import DatasetView
from .planner import Job, Planner
from .progress import Progress, status_line
from .workflow import SAMPLER, Workflow

MARK = "dtgen_queue"          # key in a prompt's extra_data: which run and items it belongs to
MAX_ERRORS_IN_A_ROW = 5
HISTORY_LOOKBACK = 200        # recent history entries searched for an earlier run's dataset path


class RunError(RuntimeError):
    """The run stopped; the message is one line saying why and what to do."""


@dataclass
class RunSettings:
    servers: list[str]
    targets: dict[str, int] | None = None
    items: int | None = None
    start: int = 0
    per_prompt: int = 1
    pending: int = 2
    retries: int = 2
    output_dir: Path | None = None
    poll: float = 0.5
    dead_after: float = 10.0
    give_up_after: float = 120.0
    max_items: int | None = None


@dataclass
class RunResult:
    dataset_dir: Path | None
    counts: dict
    queued: int
    items_done: int
    failed: list[int]
    elapsed: float
    servers: dict = field(default_factory=dict)   # url -> items finished there


class Worker:
    def __init__(self, url: str):
        self.api = ComfyAPI(url)
        self.url = self.api.url
        self.jobs: dict[str, Job] = {}
        self.failing_since: float | None = None
        self.dead = False
        self.next_probe = 0.0
        self.finished = 0


class QueueRun:
    def __init__(self, workflow: Workflow, sampler, settings: RunSettings, progress: Progress | None = None):
        self.wf, self.sampler, self.cfg = workflow, sampler, settings
        self.progress = progress or Progress()
        self.dataset = workflow.dataset_name
        self.pack_hash = sampler.pack.pack_hash
        self.client_id = str(uuid.uuid4())
        self.workers = [Worker(u) for u in dict.fromkeys(settings.servers)]
        limit = sampler.total if sampler.mode == "exhaustive" else None
        self.planner = Planner(sampler.label_of, targets=settings.targets, items=settings.items,
                               start=settings.start, per_prompt=settings.per_prompt, limit=limit,
                               retries=settings.retries, max_queued=settings.max_items)
        self.view: DatasetView | None = None
        self.reported_dir: str | None = None
        if settings.output_dir is not None:
            self.view = DatasetView(Path(settings.output_dir) / self.dataset, self.pack_hash, sampler.stream_key)
        self.errors_in_a_row = 0
        self.items_done = 0
        self.t0 = time.monotonic()

    # ------------------------------------------------------------------------------------- setup
    def connect(self) -> None:
        reachable = []
        for w in self.workers:
            try:
                w.api.system_stats()
                if not w.api.has_node(SAMPLER):
                    raise RunError(f"ComfyUI at {w.url} has no DTGen nodes: install this pack in its "
                                   "custom_nodes folder and restart it")
                reachable.append(w)
            except ServerUnreachable as e:
                if len(self.workers) == 1:
                    raise RunError(str(e)) from None
                self.progress.message(f"warning: {e}")
                self._mark_dead(w)
            except ComfyError as e:
                raise RunError(str(e)) from None
        if not reachable:
            raise RunError("no ComfyUI server reachable (" + ", ".join(w.url for w in self.workers)
                           + "); start them or fix the --server URLs")
        for w in reachable:
            self._adopt(w)
            if self.view is None:
                self._discover_dataset(w)

    def _adopt(self, w: Worker) -> None:
        running, pending = w.api.queue()
        n = 0
        for entry in running + pending:
            mark = (entry[3] if len(entry) > 3 and isinstance(entry[3], dict) else {}).get(MARK) or {}
            if (mark.get("dataset"), mark.get("pack_hash"), mark.get("stream")) == (
                    self.dataset, self.pack_hash, self.sampler.stream):   # same items: this run's to follow
                job = Job(tuple(mark.get("indices") or ()), prompt_id=entry[1], server=w.url)
                w.jobs[entry[1]] = job
                self.planner.adopt(job)
                n += 1
        if n:
            self.progress.message(f"{w.url}: {n} prompt(s) of an earlier run are still queued; waiting for "
                                  "them instead of queueing their items again")

    def _discover_dataset(self, w: Worker) -> None:
        """Where an earlier run of this dataset was written, from the server's history, so a resumed
        run knows what is done before it queues anything."""
        for entry in reversed(list(w.api.get(f"/history?max_items={HISTORY_LOOKBACK}").values())):
            prompt = entry.get("prompt") or []
            mark = (prompt[3] if len(prompt) > 3 and isinstance(prompt[3], dict) else {}).get(MARK) or {}
            reported = writer_dataset_path(entry, self.wf.writer_id) if mark.get("dataset") == self.dataset else None
            if reported and (Path(reported) / "manifest.jsonl").is_file():
                self.reported_dir = reported
                self.view = DatasetView(reported, self.pack_hash, self.sampler.stream_key)
                return

    # -------------------------------------------------------------------------------------- loop
    def run(self) -> RunResult:
        self.connect()
        try:
            self._loop()
        except KeyboardInterrupt:
            n = self._cancel_pending()
            self.progress.message(f"stopped: {n} queued prompt(s) removed; run the same command again to resume")
            raise
        except RunError:
            self._cancel_pending()
            raise
        finally:
            if self.items_done or not self.planner.n_queued:   # no bare status line before a refusal
                self.progress.show(self._status(), force=True)
            self.progress.close()
        return self._result()

    def _loop(self) -> None:
        while True:
            self._refresh_view()
            for w in self.workers:
                self._poll(w)
            self._refresh_view()
            accepted, done = self._accepted(), self._done()
            complete = self.planner.complete(accepted, done)
            if complete:
                self._cancel_pending()
                if not self._in_flight_jobs():
                    return
            else:
                self._fill(accepted, done)
                if not self._in_flight_jobs() and self.planner.exhausted():
                    raise RunError(self._why_short(accepted))
            self._check_alive()
            self.progress.show(self._status())
            time.sleep(self.cfg.poll)

    def _fill(self, accepted, done) -> None:
        live = sorted((w for w in self.workers if not w.dead and w.failing_since is None), key=lambda w: len(w.jobs))
        for w in live:
            while len(w.jobs) < self.cfg.pending:
                if self.view is None and self._in_flight_jobs():
                    return  # first item tells where the dataset is; plan the rest after it
                job = self.planner.next_job(done, accepted, self._in_flight_labels(done))
                if job is None:
                    return
                if not self._submit(w, job):
                    break

    def _submit(self, w: Worker, job: Job) -> bool:
        graph = self.wf.item_graph(job.indices[0], len(job.indices))
        extra = {MARK: {"dataset": self.dataset, "pack_hash": self.pack_hash, "stream": self.sampler.stream,
                        "indices": list(job.indices)}}
        try:
            pid = w.api.queue_prompt(graph, self.client_id, extra)
        except ServerUnreachable:
            self.planner.lost(job)
            self._failing(w)
            return False
        except ComfyError as e:
            self.planner.lost(job)
            raise RunError(str(e)) from None
        job.prompt_id, job.server, job.unseen = pid, w.url, 0
        w.jobs[pid] = job
        return True

    def _poll(self, w: Worker) -> None:
        if w.dead:
            return
        try:
            running, pending = w.api.queue()
            on_server = {e[1] for e in running + pending}
            for pid, job in list(w.jobs.items()):
                if pid in on_server:
                    job.unseen = 0
                    continue
                entry = w.api.history(pid)
                if entry is None:
                    job.unseen += 1
                    if job.unseen >= 2:   # neither queued nor in history: the server was restarted
                        del w.jobs[pid]
                        self.planner.lost(job)
                    continue
                del w.jobs[pid]
                self._finished(w, job, entry)
        except ServerUnreachable:
            self._failing(w)
            return
        except ComfyError as e:
            raise RunError(str(e)) from None
        w.failing_since = None

    def _finished(self, w: Worker, job: Job, entry: dict) -> None:
        error = execution_error(entry)
        if error is not None:
            retried = self.planner.errored(job)
            self.errors_in_a_row += 1
            self.progress.message(f"item {self._items(job)} failed on {w.url}: {error}"
                                  + (" (will retry)" if retried else f" (gave up after {job.errors} tries)"))
            if self.errors_in_a_row >= MAX_ERRORS_IN_A_ROW:
                raise RunError(f"{self.errors_in_a_row} prompts in a row failed; last error: {error}; fix it and "
                               "run the same command again to resume")
            return
        self.errors_in_a_row = 0
        self.planner.finished(job)
        self.items_done += len(job.indices)
        w.finished += len(job.indices)
        self._learn_dataset(writer_dataset_path(entry, self.wf.writer_id), w)
        self._check_pack(job)

    def _learn_dataset(self, reported: str | None, w: Worker) -> None:
        if reported is None:
            return
        if self.reported_dir is not None and reported != self.reported_dir and self.cfg.output_dir is None:
            raise RunError(f"servers write to different folders ({self.reported_dir} and {reported} from "
                           f"{w.url}); start them with one shared --output-directory")
        self.reported_dir = self.reported_dir or reported
        if self.view is None:
            if not (Path(reported) / "manifest.jsonl").is_file():
                raise RunError(f"the server wrote the dataset to {reported}, which this machine cannot see; run "
                               "the client where that folder is visible or pass --output-dir <mounted output folder>")
            self.view = DatasetView(reported, self.pack_hash, self.sampler.stream_key)
        elif not (self.view.dir / "manifest.jsonl").is_file():
            raise RunError(f"no manifest at {self.view.dir} although the server wrote {reported}: --output-dir "
                           "must be the server's output folder")

    def _check_pack(self, job: Job) -> None:
        if self.view is None:
            return
        self.view.refresh()
        if not set(job.indices) & self.view.done_indices() and self.view.foreign_pack_hashes():
            raise RunError(f"the server's prompt pack {self.sampler.pack.name!r} differs from the local copy "
                           f"({self.sampler.pack.source}); pass --pack-dir with the server's pack folder")

    def _failing(self, w: Worker) -> None:
        now = time.monotonic()
        if w.failing_since is None:
            w.failing_since = now
        if now - w.failing_since >= self.cfg.dead_after and not w.dead:
            lost = self._mark_dead(w)
            self.progress.message(f"{w.url} stopped answering; its {lost} unfinished prompt(s) are "
                                  "queued again" + (" on the other servers" if len(self.workers) > 1 else
                                                    " when it is back"))

    def _mark_dead(self, w: Worker) -> int:
        """Its unfinished jobs go back to the planner (they may have died with it)."""
        w.dead, w.next_probe = True, time.monotonic() + 3
        w.failing_since = w.failing_since or time.monotonic()
        lost = list(w.jobs.values())
        w.jobs.clear()
        for job in lost:
            self.planner.lost(job)
        return len(lost)

    def _check_alive(self) -> None:
        now = time.monotonic()
        for w in self.workers:
            if w.dead and now >= w.next_probe:
                try:
                    w.api.system_stats()
                    w.dead, w.failing_since = False, None
                    self.progress.message(f"{w.url} is back")
                except ComfyError:
                    w.next_probe = now + 3
        down = [w for w in self.workers if w.dead]
        if len(down) == len(self.workers):
            since = min(w.failing_since or now for w in down)
            if now - since >= self.cfg.give_up_after:
                raise RunError("no ComfyUI server answers (" + ", ".join(w.url for w in down) + "); start one "
                               "and run the same command again to resume")

    def _cancel_pending(self) -> int:
        """Remove this run's not-yet-started prompts from the servers' queues."""
        removed = 0
        for w in self.workers:
            if w.dead or not w.jobs:
                continue
            try:
                _, pending = w.api.queue()
                ours = [e[1] for e in pending if e[1] in w.jobs]
                if ours:
                    w.api.delete_pending(ours)
                    for pid in ours:
                        self.planner.lost(w.jobs.pop(pid))
                    removed += len(ours)
            except ComfyError:
                pass
        return removed

    # ----------------------------------------------------------------------------------- views
    def _refresh_view(self) -> None:
        if self.view is not None:
            self.view.refresh()

    def _accepted(self) -> dict[str, int]:
        counts = self.view.counts() if self.view is not None else {}
        return {label: c["accepted"] for label, c in counts.items()}

    def _done(self) -> set[int]:
        return self.view.done_indices() if self.view is not None else set()

    def _in_flight_jobs(self) -> list[Job]:
        return [job for w in self.workers for job in w.jobs.values()]

    def _in_flight_labels(self, done: set[int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for job in self._in_flight_jobs():
            for i in job.indices:
                if i not in done:
                    label = self.sampler.label_of(i)
                    out[label] = out.get(label, 0) + 1
        return out

    @staticmethod
    def _items(job: Job) -> str:
        i = job.indices
        return str(i[0]) if len(i) == 1 else f"{i[0]}..{i[-1]}"

    def _why_short(self, accepted) -> str:
        if self.cfg.targets is None:
            return f"{len(self.planner.failed)} item(s) failed after retries: {sorted(self.planner.failed)[:10]}"
        short = {k: f"{accepted.get(k, 0)}/{t}" for k, t in self.cfg.targets.items() if accepted.get(k, 0) < t}
        if self.planner.max_queued is not None and self.planner.n_queued >= self.planner.max_queued:
            why = f"--max-items {self.planner.max_queued} reached (the filter rejects too much?)"
        elif self.sampler.mode == "exhaustive":
            why = "the exhaustive prompt space is used up"
        else:
            why = f"{len(self.planner.failed)} item(s) failed after retries"
        return f"quota not reached for {short}: {why}; raise --max-items, loosen the filter or lower --quota"

    def _status(self) -> str:
        counts = self.view.counts() if self.view is not None else {}
        alive = sum(not w.dead for w in self.workers)
        servers = f"{alive} server" + ("s" if alive != 1 else "")
        return status_line(counts, self.cfg.targets, self.cfg.items, len(self._in_flight_jobs()), servers,
                           time.monotonic() - self.t0, self.items_done)

    def _result(self) -> RunResult:
        return RunResult(
            dataset_dir=self.view.dir if self.view is not None else None,
            counts=self.view.refresh().counts() if self.view is not None else {},
            queued=self.planner.n_queued, items_done=self.items_done, failed=sorted(self.planner.failed),
            elapsed=time.monotonic() - self.t0, servers={w.url: w.finished for w in self.workers})
