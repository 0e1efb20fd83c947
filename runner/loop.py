"""The one run loop: plan the items the dataset lacks, hand them to an executor (one ComfyUI over
HTTP: scheduler.py; Ray workers: ray/queue.py), take back what became of them, until the quotas
(or N items) are met.

The dataset's manifest is the source of truth: what is stored is never planned again, so a killed
client resumes where it stopped. The loop owns the planner, the dataset view, the copy-paste
branch's progress (a hybrid graph over HTTP) and the policies of run.py; an executor owns only
where prompts run: ``submit``, ``poll``, ``cancel`` (and what is in flight).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..nodes.store.layout import MARKER
from .dataset_view import DatasetView
from .planner import Job
from .progress import Progress, status_line
from .run import (
    COPY_PASTE,
    FLAG_NAME,
    GENERATED,
    ErrorStreak,
    QuotaNotReached,
    RunError,
    RunResult,
    RunSettings,
    build_planner,
    in_flight_labels,
    item_failed_message,
    max_items_budget,
    pack_mismatch,
    why_short,
    writer_quota,
)
from .workflow import Workflow


@dataclass
class Outcome:
    """What became of one job an executor ran."""
    job: Job
    where: str                    # the server or worker, for messages
    server: str                   # ... and as RunResult.servers counts it
    error: str | None = None      # the graph failed: the planner tries it again (bounded)
    lost: bool = False            # it may not have run (server restarted, worker gone): planned again
    dataset_paths: list = field(default_factory=list)   # where its writers reported the dataset (HTTP)
    copy_paste: tuple[int, bool] | None = None          # its copy-paste node's (items made, "done")


class Executor(Protocol):
    """Where prompts run."""
    servers: list[str]            # RunResult.servers' keys, in order
    shared_dataset: bool          # the writers write the run's dataset (False: a scratch one; no quota net)

    def start(self, run: RunLoop) -> None: ...             # connect; adopt what an earlier run left
    def slots(self) -> Iterator: ...                       # free places for one more job, lazily
    def submit(self, job: Job, graph: dict, slot) -> bool: ...   # False: not queued (the server is away)
    def poll(self) -> list[Outcome]: ...                   # jobs that ended since the last poll
    def wait(self, seconds: float) -> None: ...            # until something may have ended
    def cancel(self) -> int: ...                           # drop the jobs not started; how many
    def in_flight(self) -> list[Job]: ...
    def stalled(self) -> bool: ...                         # nothing in flight: True to judge the plan, False to wait
    def status(self) -> tuple[int, str]: ...               # (in flight, "1 server") for the status line


class RunLoop:
    def __init__(self, workflow: Workflow, sampler, settings: RunSettings, executor: Executor,
                 progress: Progress | None = None, dataset_dir: Path | None = None):
        """``sampler``: the prompt sampler rebuilt locally (``packs.local_sampler``), None for a graph
        with only a copy-paste branch. ``dataset_dir``: the dataset's folder, if known."""
        self.wf, self.sampler, self.cfg, self.executor = workflow, sampler, settings, executor
        self.progress = progress or Progress()
        self.dataset = workflow.dataset_name
        self.pack_hash = sampler.pack.pack_hash if sampler is not None else None
        self.stream = sampler.stream if sampler is not None else None
        self.sampler_on = sampler is not None and (settings.items is not None or bool(settings.targets))
        self.cp_on = workflow.has_copy_paste and settings.items is None and settings.copy_paste_quota > 0
        if not (self.sampler_on or self.cp_on):
            raise ValueError("nothing to queue: no prompt-sampler target and no copy-paste quota")
        targets = settings.targets if self.sampler_on or settings.items is not None else {}
        self.planner = build_planner(sampler, settings, targets)
        self.cp_quota = settings.copy_paste_quota if self.cp_on else 0
        self.cp_count, self.cp_classes = 0, ()
        if self.cp_on:
            inputs = workflow.copy_paste_inputs()
            self.cp_count, self.cp_classes = max(1, inputs["count"]), inputs["classes"]
            workflow.set_copy_paste_quota(self.cp_quota)   # the node's resume mode, on this dataset
            if not isinstance(workflow.graph[workflow.copy_paste_id]["inputs"].get("dataset_name"), list):
                workflow.set_input(workflow.copy_paste_id, "dataset_name", self.dataset)
        self.cp_quota_met = False          # a lone copy-paste prompt said "done" and the manifest agrees
        self.cp_done_unconfirmed = False   # one said "done" beside others: wait for them, then check with one more
        self.cp_queued = 0                 # copy-paste items asked for (count per prompt), for --max-items
        self.view: DatasetView | None = None
        self.reported_dir: str | None = None
        if dataset_dir is not None:
            self.view = self.new_view(dataset_dir)
        self.error_streak = ErrorStreak()
        self.items_done = 0
        self.made = {GENERATED: 0, COPY_PASTE: 0}
        self.items_by_server = {server: 0 for server in executor.servers}
        self.t0 = time.monotonic()

    def new_view(self, path) -> DatasetView:
        return DatasetView(path, self.pack_hash, self.sampler.stream_key if self.sampler is not None else None)

    # ----------------------------------------------------------------------- what executors call
    def adopt(self, job: Job) -> None:
        """A job of an earlier run still in flight: never planned again."""
        if job.indices:
            self.planner.adopt(job)
        if job.copy_paste:
            self.cp_queued += self.cp_count

    def lost(self, job: Job) -> None:
        """A job that may not have run: the sampler's items go back to the planner (a copy-paste
        prompt needs nothing back: its node plans again from the dataset)."""
        if job.indices:
            self.planner.lost(job)

    def use_dataset(self, reported: str) -> None:
        """An earlier run's dataset, found by the executor (the server's history)."""
        self.reported_dir = reported
        self.view = self.new_view(reported)

    # -------------------------------------------------------------------------------------- loop
    def connect(self) -> None:
        self.executor.start(self)

    def run(self) -> RunResult:
        self.connect()
        try:
            self._loop()
        except KeyboardInterrupt:
            n = self.executor.cancel()
            self.progress.message(f"stopped: {n} queued prompt(s) removed; run the same command again to resume")
            raise
        except BaseException:
            self.executor.cancel()
            raise
        finally:
            if self.items_done or not self.planner.n_queued:   # no bare status line before a refusal
                self.progress.show(self._status(), force=True)
            self.progress.close()
        return self._result()

    def _loop(self) -> None:
        while True:
            self._refresh_view()
            for outcome in self.executor.poll():
                self._ended(outcome)
            self._refresh_view()
            accepted, done = self._accepted(), self._done()
            sd_complete = self.planner.complete(accepted, done)
            cp_complete = not self.cp_on or self.cp_quota_met
            if sd_complete and cp_complete:
                self.executor.cancel()
                if not self.executor.in_flight():
                    return
            else:
                self._fill(accepted, done, sd_complete)
                if not self.executor.in_flight():
                    if not self.executor.stalled():
                        continue
                    if not sd_complete and self.planner.exhausted():
                        raise QuotaNotReached(self._why_short(accepted))
                    if not cp_complete and not self._cp_budget_left():
                        raise QuotaNotReached(self._why_short_copy_paste())
            self.progress.show(self._status())
            self.executor.wait(self.cfg.poll)

    def _fill(self, accepted, done, sd_complete: bool = False) -> None:
        for slot in self.executor.slots():
            if self.view is None and self.executor.in_flight():
                return  # first item tells where the dataset is; plan the rest after it
            job = self._next_job(accepted, done, sd_complete)
            if job is None:
                return
            if not self.executor.submit(job, self._graph(job), slot):
                self.lost(job)
                return
            if job.copy_paste:
                others = [j for j in self.executor.in_flight() if j.copy_paste and j is not job]
                job.ran_alone = not others
                for other in others:
                    other.ran_alone = False
                self.cp_queued += self.cp_count

    def _next_job(self, accepted, done, sd_complete: bool) -> Job | None:
        """The sampler's next items (with the copy-paste branch while it still wants items), else a
        copy-paste prompt alone, else nothing."""
        with_cp = self._cp_wanted() or self._cp_probe_due()
        if self.sampler_on and not sd_complete:
            job = self.planner.next_job(done, accepted,
                                        in_flight_labels(self.executor.in_flight(), done, self.planner.label_of))
            if job is not None:
                job.copy_paste = with_cp
                return job
        if with_cp:
            return Job((), copy_paste=True)
        return None

    def _graph(self, job: Job) -> dict:
        quota = self._writer_quota() if self.executor.shared_dataset else 0
        if job.indices:
            return self.wf.item_graph(job.indices[0], len(job.indices), copy_paste=job.copy_paste, writer_quota=quota)
        return self.wf.copy_paste_graph(writer_quota=quota)

    def _writer_quota(self) -> int | None:
        """The writers' quota_per_class, a safety net (run.writer_quota)."""
        playing = {name for name, on in ((GENERATED, self.sampler_on), (COPY_PASTE, self.cp_on)) if on}
        other = self.view.accepted_outside(playing) if self.view is not None else {}
        return writer_quota(self.cfg.targets, self.cp_quota, other)

    # ------------------------------------------------------------------------ what became of a job
    def _ended(self, outcome: Outcome) -> None:
        job = outcome.job
        if outcome.lost:
            self.lost(job)
            return
        if outcome.error is not None:
            if job.indices:
                self.progress.message(item_failed_message(job, outcome.where, outcome.error, self.planner.errored(job)))
            else:
                self.progress.message(f"a copy-paste prompt failed on {outcome.where}: {outcome.error} (the node "
                                      "plans its items again)")
            self.error_streak.failed(outcome.error)
            return
        self.error_streak.ok()
        if job.indices:
            self.planner.finished(job)
            self.items_done += len(job.indices)
            self.made[GENERATED] += len(job.indices)
            self.items_by_server[outcome.server] = self.items_by_server.get(outcome.server, 0) + len(job.indices)
        for reported in outcome.dataset_paths:
            self._learn_dataset(reported)
        if job.indices and outcome.dataset_paths:   # the server's writer stored them (Ray checks its items itself)
            self._check_pack(job)
        if outcome.copy_paste is not None:
            self._copy_paste_ended(job, outcome)

    def _copy_paste_ended(self, job: Job, outcome: Outcome) -> None:
        n, done = outcome.copy_paste
        self.items_done += n
        self.made[COPY_PASTE] += n
        self.items_by_server[outcome.server] = self.items_by_server.get(outcome.server, 0) + n
        if done:
            if job.ran_alone and not self._cp_short():
                self.cp_quota_met = True
            else:
                self.cp_done_unconfirmed = True   # others may still hold claims: check again when they are done
        elif job.ran_alone:
            self.cp_done_unconfirmed = False      # the check found work: back to normal

    def _learn_dataset(self, reported: str | None) -> None:
        if reported is None:
            return
        self.reported_dir = self.reported_dir or reported
        # dataset.json, not the manifest: the writer node may still be writing its lines in the
        # background (another prompt was queued behind it); the folder and marker exist at once
        if self.view is None:
            if not (Path(reported) / MARKER).is_file():
                raise RunError(f"the server wrote the dataset to {reported}, which this machine cannot see; run "
                               "the client where that folder is visible or pass --output-dir <mounted output folder>")
            self.view = self.new_view(reported)
        elif not (self.view.dir / MARKER).is_file():
            raise RunError(f"no dataset at {self.view.dir} although the server wrote {reported}: --output-dir "
                           "must be the server's output folder")

    def _check_pack(self, job: Job) -> None:
        if self.view is None or self.sampler is None:
            return
        self.view.refresh()
        if not set(job.indices) & self.view.done_indices() and self.view.foreign_pack_hashes():
            raise pack_mismatch(self.sampler.pack, "the server's", "pass --pack-dir with the server's pack folder")

    # ------------------------------------------------------------------------------- copy-paste
    def _cp_budget_left(self) -> bool:
        return self.cp_queued < self._cp_budget()

    def _cp_budget(self) -> int:
        if self.cfg.copy_paste_max_items is not None:
            return self.cfg.copy_paste_max_items
        return max_items_budget([self.cp_quota] * max(1, len(self._cp_labels())))

    def _cp_wanted(self) -> bool:
        return self.cp_on and not self.cp_quota_met and not self.cp_done_unconfirmed and self._cp_budget_left()

    def _cp_probe_due(self) -> bool:
        """After a "done" beside other copy-paste prompts, once they have finished: one prompt alone,
        which sees every claim of this run resolved, says whether the quota is really met."""
        return (self.cp_on and not self.cp_quota_met and self.cp_done_unconfirmed and self._cp_budget_left()
                and not any(j.copy_paste for j in self.executor.in_flight()))

    def _cp_short(self) -> bool:
        """Whether the manifest shows a copy-paste class below its quota."""
        if self.view is None:
            return False
        counts = self.view.refresh().counts(COPY_PASTE)
        return any(counts.get(label, {}).get("accepted", 0) < self.cp_quota for label in self._cp_labels())

    def _cp_labels(self) -> tuple[str, ...]:
        """The copy-paste classes: the node's classes input, else those in the dataset so far (the
        cutout set is on the server; the client does not read it)."""
        if self.cp_classes:
            return self.cp_classes
        return tuple(sorted(self.view.labels_of(COPY_PASTE))) if self.view is not None else ()

    # ----------------------------------------------------------------------------------- views
    def _refresh_view(self) -> None:
        if self.view is not None:
            self.view.refresh()

    def _accepted(self, source: str = GENERATED) -> dict[str, int]:
        """Accepted images per class toward one source's quota (SD targets count SD images only)."""
        counts = self.view.counts(source) if self.view is not None else {}
        return {label: c["accepted"] for label, c in counts.items()}

    def _done(self) -> set[int]:
        return self.view.done_indices() if self.view is not None else set()

    def _why_short(self, accepted) -> str:
        return why_short(self.cfg, self.planner, self.sampler, accepted, "SD quota" if self.cp_on else "quota")

    def _why_short_copy_paste(self) -> str:
        counts = self.view.counts(COPY_PASTE) if self.view is not None else {}
        short = {k: f"{counts.get(k, {}).get('accepted', 0)}/{self.cp_quota}" for k in self._cp_labels()
                 if counts.get(k, {}).get("accepted", 0) < self.cp_quota}
        return (f"copy-paste quota not reached for {short or 'its classes'}: {self.cp_queued} copy-paste items "
                f"asked for, --max-items {self._cp_budget()} reached (the filter rejects too much?); raise "
                "--max-items, loosen the filter or lower the copy-paste quota")

    def _sources(self) -> list[tuple[str, dict, dict]]:
        """(name, counts toward its quota, per-class targets) of each source in play."""
        out = []
        if self.sampler_on and self.cfg.targets is not None:
            out.append((FLAG_NAME[GENERATED], self.view.counts(GENERATED) if self.view is not None else {},
                        self.cfg.targets))
        if self.cp_on:
            out.append((FLAG_NAME[COPY_PASTE], self.view.counts(COPY_PASTE) if self.view is not None else {},
                        {label: self.cp_quota for label in self._cp_labels()}))
        return out

    def _status(self) -> str:
        self._refresh_view()
        in_flight, servers = self.executor.status()
        elapsed = time.monotonic() - self.t0
        if self.cp_on:
            sources = self._sources()
            merged: dict[str, dict[str, int]] = {}
            for _, counts, _ in sources:
                for label, c in counts.items():
                    m = merged.setdefault(label, {"accepted": 0, "rejected": 0})
                    m["accepted"] += c.get("accepted", 0)
                    m["rejected"] += c.get("rejected", 0)
            return status_line(merged, None, None, in_flight, servers, elapsed, self.items_done, by_source=sources)
        counts = self.view.counts(GENERATED) if self.view is not None else {}
        return status_line(counts, self.cfg.targets, self.cfg.items, in_flight, servers, elapsed, self.items_done)

    def _result(self) -> RunResult:
        by_source = {}
        if self.view is not None:
            self.view.refresh()
            present = self.view.sources()
            for name, on in ((GENERATED, self.sampler_on), (COPY_PASTE, self.cp_on)):
                if on or name in present:
                    by_source[FLAG_NAME[name]] = self.view.counts(name)
        if len(by_source) < 2 and not self.cp_on:
            by_source = {}   # one source: the plain per-class counts say it all
        return RunResult(
            dataset_dir=self.view.dir if self.view is not None else None,
            counts=self.view.counts() if self.view is not None else {},
            queued=self.planner.n_queued, items_done=self.items_done, failed=sorted(self.planner.failed),
            elapsed=time.monotonic() - self.t0, servers=dict(self.items_by_server),
            by_source=by_source, items_by_source={FLAG_NAME[k]: v for k, v in self.made.items()
                                                  if v or FLAG_NAME[k] in by_source})
