"""Queue a DTGen workflow on one ComfyUI server until the per-class quotas (or N items) are in the
dataset. Several servers (GPUs, nodes) are Ray's job: ``--ray`` (runner/ray/queue.py) plans the same way
and leaves worker faults to Ray.

Sources: the prompt sampler's SD images (``sd``, stored as source ``generated``) are planned here,
index by index. A copy-paste branch (``DTGenCopyPaste`` -> its own writer) runs in the node's resume
mode: the node claims the items the dataset lacks (claims keep concurrent prompts apart) and reports
"done" when every class has its copy-paste quota. The client rides it along with the SD prompts,
queues the branch alone once SD is full, and takes "done" for full only from a prompt that no other
copy-paste prompt overlapped (else one more prompt checks). Each source's quota counts its own
images only.

The server keeps ``pending`` prompts queued (--pending; ``waiting``: the server's own queue). The dataset's manifest is the source of truth:
what is stored is never queued again, so a killed client resumes where it stopped, and prompts an
earlier run left on the server are adopted instead of queued twice. A server that stops answering
is waited for (``give_up_after`` seconds); prompts lost with its restart are queued again.
"""
from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

from ..nodes.store.layout import MARKER
from ..nodes.synthesis.copy_paste import DONE_TEXT, MADE_TEXT
from .api import (
    ComfyAPI,
    ComfyError,
    ServerUnreachable,
    execution_error,
    writer_dataset_path,
)
from .dataset_view import DatasetView
from .planner import Job
from .progress import Progress, status_line
from .run import (
    COPY_PASTE,
    FLAG_NAME,
    GENERATED,
    ErrorStreak,
    RunError,
    RunResult,
    RunSettings,
    build_planner,
    in_flight_labels,
    item_failed_message,
    lost_when_unseen,
    max_items_budget,
    pack_mismatch,
    why_short,
    writer_quota,
)
from .workflow import COPY_PASTE as COPY_PASTE_NODE
from .workflow import SAMPLER, WRITER, Workflow

__all__ = ["QueueRun", "RunError", "RunResult", "RunSettings", "copy_paste_report", "why_short"]

MARK = "dtgen_queue"          # key in a prompt's extra_data: which run and items it belongs to
HISTORY_LOOKBACK = 200        # recent history entries searched for an earlier run's dataset path
CP_DONE = re.compile(re.escape(DONE_TEXT))            # the copy-paste node's text when it has nothing to do
CP_MADE = re.compile(r"(\d+) " + re.escape(MADE_TEXT))  # ... and when it made items


def copy_paste_report(entry: dict, node_id: str) -> tuple[int, bool]:
    """(items made, "done": every class has its quota) from the copy-paste node's history output.
    The node's output holds only its canvas text today, so the two facts are read from that text
    (DONE_TEXT / MADE_TEXT, nodes/synthesis/copy_paste.py); a structured ``dtgen_copy_paste``
    entry ``{"made": n, "done": bool}`` is read first once the node reports one."""
    output = (entry.get("outputs") or {}).get(str(node_id)) or {}
    report = output.get("dtgen_copy_paste")
    if isinstance(report, list) and report and isinstance(report[0], dict):
        return int(report[0].get("made") or 0), bool(report[0].get("done"))
    text = "\n".join(map(str, output.get("text") or []))
    made = CP_MADE.search(text)
    return (int(made.group(1)) if made else 0), bool(CP_DONE.search(text))


class QueueRun:
    def __init__(self, workflow: Workflow, sampler, settings: RunSettings, progress: Progress | None = None):
        """``sampler``: the prompt sampler rebuilt locally (``packs.local_sampler``), None for a graph
        with only a copy-paste branch."""
        self.wf, self.sampler, self.cfg = workflow, sampler, settings
        self.progress = progress or Progress()
        self.dataset = workflow.dataset_name
        self.pack_hash = sampler.pack.pack_hash if sampler is not None else None
        self.stream = sampler.stream if sampler is not None else None
        self.client_id = str(uuid.uuid4())
        self.api = ComfyAPI(settings.server)
        self.url = self.api.url
        self.jobs: dict[str, Job] = {}          # prompt id -> job, on the server
        self.failing_since: float | None = None  # since when the server does not answer
        self.items_on_server = 0                 # items finished on the server in this run
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
        self.cp_queued = 0         # copy-paste items asked for (count per prompt), for --max-items
        self.view: DatasetView | None = None
        self.reported_dir: str | None = None
        if settings.output_dir is not None:
            self.view = self._new_view(Path(settings.output_dir) / self.dataset)
        self.error_streak = ErrorStreak()
        self.items_done = 0
        self.made = {GENERATED: 0, COPY_PASTE: 0}
        self.t0 = time.monotonic()

    def _new_view(self, path) -> DatasetView:
        return DatasetView(path, self.pack_hash, self.sampler.stream_key if self.sampler is not None else None)

    # ------------------------------------------------------------------------------------- setup
    def connect(self) -> None:
        try:
            self.api.system_stats()
            if self.sampler_on and not self.api.has_node(SAMPLER):
                raise RunError(f"ComfyUI at {self.url} has no DTGen nodes: install this pack in its "
                               "custom_nodes folder and restart it")
            if self.cp_on and not self.api.has_node(COPY_PASTE_NODE):
                raise RunError(f"ComfyUI at {self.url} has no {COPY_PASTE_NODE} node: update the DTGen pack in its "
                               "custom_nodes folder and restart it")
        except ComfyError as e:   # unreachable too: one line saying what to do
            raise RunError(str(e)) from None
        self._adopt()
        if self.view is None:
            self._discover_dataset()

    def _adopt(self) -> None:
        running, waiting = self.api.queue()
        n = 0
        for entry in running + waiting:
            mark = (entry[3] if len(entry) > 3 and isinstance(entry[3], dict) else {}).get(MARK) or {}
            indices, copy_paste = tuple(mark.get("indices") or ()), bool(mark.get("copy_paste"))
            if mark.get("dataset") != self.dataset:
                continue
            if indices and (mark.get("pack_hash"), mark.get("stream")) != (self.pack_hash, self.stream):
                continue   # other items (another seed, pack or classes): not this run's
            if not indices and not (copy_paste and self.cp_on):
                continue
            job = Job(indices, prompt_id=entry[1], server=self.url, copy_paste=copy_paste)
            self.jobs[entry[1]] = job
            if indices:
                self.planner.adopt(job)
            if copy_paste:
                self.cp_queued += self.cp_count
            n += 1
        if n:
            self.progress.message(f"{self.url}: {n} prompt(s) of an earlier run are still queued; waiting for "
                                  "them instead of queueing their items again")

    def _discover_dataset(self) -> None:
        """Where an earlier run of this dataset was written, from the server's history, so a resumed
        run knows what is done before it queues anything."""
        for entry in reversed(list(self.api.get(f"/history?max_items={HISTORY_LOOKBACK}").values())):
            prompt = entry.get("prompt") or []
            mark = (prompt[3] if len(prompt) > 3 and isinstance(prompt[3], dict) else {}).get(MARK) or {}
            if mark.get("dataset") != self.dataset:
                continue
            graph = prompt[2] if len(prompt) > 2 and isinstance(prompt[2], dict) else {}
            writers = [k for k, n in graph.items() if isinstance(n, dict) and n.get("class_type") == WRITER]
            for writer in writers or self.wf.writer_ids:   # that run's writers (another graph may have other ids)
                reported = writer_dataset_path(entry, writer)
                if reported and (Path(reported) / "manifest.jsonl").is_file():
                    self.reported_dir = reported
                    self.view = self._new_view(reported)
                    return

    # -------------------------------------------------------------------------------------- loop
    def run(self) -> RunResult:
        self.connect()
        try:
            self._loop()
        except KeyboardInterrupt:
            n = self._cancel_waiting()
            self.progress.message(f"stopped: {n} queued prompt(s) removed; run the same command again to resume")
            raise
        except RunError:
            self._cancel_waiting()
            raise
        finally:
            if self.items_done or not self.planner.n_queued:   # no bare status line before a refusal
                self.progress.show(self._status(), force=True)
            self.progress.close()
        return self._result()

    def _loop(self) -> None:
        while True:
            self._refresh_view()
            self._poll()
            self._refresh_view()
            accepted, done = self._accepted(), self._done()
            sd_complete = self.planner.complete(accepted, done)
            cp_complete = not self.cp_on or self.cp_quota_met
            if sd_complete and cp_complete:
                self._cancel_waiting()
                if not self._in_flight_jobs():
                    return
            else:
                self._fill(accepted, done, sd_complete)
                if not self._in_flight_jobs():
                    if not sd_complete and self.planner.exhausted():
                        raise RunError(self._why_short(accepted))
                    if not cp_complete and not self._cp_budget_left():
                        raise RunError(self._why_short_copy_paste())
            self.progress.show(self._status())
            time.sleep(self.cfg.poll)

    def _fill(self, accepted, done, sd_complete: bool = False) -> None:
        if self.failing_since is not None:
            return
        while len(self.jobs) < self.cfg.pending:
            if self.view is None and self.jobs:
                return  # first item tells where the dataset is; plan the rest after it
            job = self._next_job(accepted, done, sd_complete)
            if job is None:
                return
            if not self._submit(job):
                return

    def _next_job(self, accepted, done, sd_complete: bool) -> Job | None:
        """The sampler's next items (with the copy-paste branch while it still wants items), else a
        copy-paste prompt alone, else nothing."""
        with_cp = self._cp_wanted() or self._cp_probe_due()
        if self.sampler_on and not sd_complete:
            job = self.planner.next_job(done, accepted, in_flight_labels(self.jobs.values(), done, self.planner.label_of))
            if job is not None:
                job.copy_paste = with_cp
                return job
        if with_cp:
            return Job((), copy_paste=True)
        return None

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
                and not any(j.copy_paste for j in self._in_flight_jobs()))

    def _submit(self, job: Job) -> bool:
        quota = self._writer_quota()
        if job.indices:
            graph = self.wf.item_graph(job.indices[0], len(job.indices), copy_paste=job.copy_paste,
                                       writer_quota=quota)
        else:
            graph = self.wf.copy_paste_graph(writer_quota=quota)
        extra = {MARK: {"dataset": self.dataset, "pack_hash": self.pack_hash, "stream": self.stream,
                        "indices": list(job.indices), "copy_paste": job.copy_paste}}
        try:
            pid = self.api.queue_prompt(graph, self.client_id, extra)
        except ServerUnreachable:
            self._lost(job)
            self._failing()
            return False
        except ComfyError as e:
            self._lost(job)
            raise RunError(str(e)) from None
        if job.copy_paste:
            others = [j for j in self._in_flight_jobs() if j.copy_paste]
            job.ran_alone = not others
            for other in others:
                other.ran_alone = False
            self.cp_queued += self.cp_count
        job.prompt_id, job.server, job.polls_unseen = pid, self.url, 0
        self.jobs[pid] = job
        return True

    def _writer_quota(self) -> int | None:
        """The writers' quota_per_class, a safety net. A writer counts the accepted images of every
        source, so with several sources the net is the sum of the quotas in play plus what other
        sources already hold; with the sampler alone it is the quota itself, as before."""
        playing = {name for name, on in ((GENERATED, self.sampler_on), (COPY_PASTE, self.cp_on)) if on}
        other = self.view.accepted_outside(playing) if self.view is not None else {}
        return writer_quota(self.cfg.targets, self.cp_quota, other)

    def _lost(self, job: Job) -> None:
        """A job that may not have run (the server was restarted without it): the sampler's items
        go back to the planner (a copy-paste prompt needs nothing back: its node plans again from
        the dataset)."""
        if job.indices:
            self.planner.lost(job)

    def _poll(self) -> None:
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
                        self._lost(job)
                    continue
                del self.jobs[pid]
                self._finished(job, entry)
        except ServerUnreachable:
            self._failing()
            return
        except ComfyError as e:
            raise RunError(str(e)) from None
        if self.failing_since is not None:
            self.progress.message(f"{self.url} is back")
        self.failing_since = None

    def _finished(self, job: Job, entry: dict) -> None:
        error = execution_error(entry)
        if error is not None:
            if job.indices:
                self.progress.message(item_failed_message(job, self.url, error, self.planner.errored(job)))
            else:
                self.progress.message(f"a copy-paste prompt failed on {self.url}: {error} (the node plans its "
                                      "items again)")
            self.error_streak.failed(error)
            return
        self.error_streak.ok()
        if job.indices:
            self.planner.finished(job)
            self.items_done += len(job.indices)
            self.made[GENERATED] += len(job.indices)
            self.items_on_server += len(job.indices)
        writers = ([self.wf.writer_id] if job.indices else []) + (self.wf.copy_paste_writer_ids if job.copy_paste else [])
        for writer in writers:
            self._learn_dataset(writer_dataset_path(entry, writer))
        if job.indices:
            self._check_pack(job)
        if job.copy_paste:
            self._copy_paste_finished(job, entry)

    def _copy_paste_finished(self, job: Job, entry: dict) -> None:
        n, done = copy_paste_report(entry, self.wf.copy_paste_id)
        self.items_done += n
        self.made[COPY_PASTE] += n
        self.items_on_server += n
        if done:
            if job.ran_alone and not self._cp_short():
                self.cp_quota_met = True
            else:
                self.cp_done_unconfirmed = True   # others may still hold claims: check again when they are done
        elif job.ran_alone:
            self.cp_done_unconfirmed = False      # the check found work: back to normal

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
            self.view = self._new_view(reported)
        elif not (self.view.dir / MARKER).is_file():
            raise RunError(f"no dataset at {self.view.dir} although the server wrote {reported}: --output-dir "
                           "must be the server's output folder")

    def _check_pack(self, job: Job) -> None:
        if self.view is None or self.sampler is None:
            return
        self.view.refresh()
        if not set(job.indices) & self.view.done_indices() and self.view.foreign_pack_hashes():
            raise pack_mismatch(self.sampler.pack, "the server's", "pass --pack-dir with the server's pack folder")

    def _failing(self) -> None:
        """The server does not answer: wait for it (its queue may survive), up to give_up_after."""
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
            self.progress.message(f"{self.url} stopped answering; waiting for it (up to "
                                  f"{self.cfg.give_up_after:g} s)")
        elif now - self.failing_since >= self.cfg.give_up_after:
            raise RunError(f"ComfyUI at {self.url} has not answered for {self.cfg.give_up_after:g} s; start it "
                           "and run the same command again to resume")

    def _cancel_waiting(self) -> int:
        """Remove this run's not-yet-started prompts from the server's queue."""
        if not self.jobs or self.failing_since is not None:
            return 0
        try:
            _, waiting = self.api.queue()
            ours = [e[1] for e in waiting if e[1] in self.jobs]
            if ours:
                self.api.delete_waiting(ours)
                for pid in ours:
                    self._lost(self.jobs.pop(pid))
            return len(ours)
        except ComfyError:
            return 0

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

    def _in_flight_jobs(self) -> list[Job]:
        return list(self.jobs.values())

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
            out.append((FLAG_NAME[GENERATED], self.view.counts(GENERATED) if self.view is not None else {}, self.cfg.targets))
        if self.cp_on:
            out.append((FLAG_NAME[COPY_PASTE], self.view.counts(COPY_PASTE) if self.view is not None else {},
                        {label: self.cp_quota for label in self._cp_labels()}))
        return out

    def _status(self) -> str:
        servers = "0 servers" if self.failing_since is not None else "1 server"
        elapsed, in_flight = time.monotonic() - self.t0, len(self._in_flight_jobs())
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
            elapsed=time.monotonic() - self.t0, servers={self.url: self.items_on_server},
            by_source=by_source, items_by_source={FLAG_NAME[k]: v for k, v in self.made.items() if v or FLAG_NAME[k] in by_source})

