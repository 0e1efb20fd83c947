"""Which item indices to queue next: per-class quotas or a fixed range, each index at most once.

A *job* is one queue run: ``per_prompt`` consecutive indices (the sampler's start_index/count),
possibly with the copy-paste branch of a hybrid graph riding along (planned by its node, not here).
Items in flight count as future accepted images of their class, so a class never gets more
indices than it still needs; a rejected item leaves a gap that the next plan fills. A job that
errored goes back to the retry pool a bounded number of times; a job lost with its server goes
back without using up a retry.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..nodes.common.quota import still_needed


@dataclass(eq=False)
class Job:
    indices: tuple[int, ...]  # the prompt sampler's items (empty: a copy-paste prompt only)
    errors: int = 0
    prompt_id: str | None = None
    server: str | None = None
    polls_unseen: int = 0    # polls in a row in which the server knew nothing of the prompt
    copy_paste: bool = False  # the graph has the copy-paste branch (its node in resume mode)
    ran_alone: bool = False   # no other copy-paste prompt was in flight while this one was


class Planner:
    def __init__(self, label_of: Callable[[int], str], *, targets: dict[str, int] | None = None,
                 items: int | None = None, start: int = 0, per_prompt: int = 1, limit: int | None = None,
                 retries: int = 2, max_queued: int | None = None):
        if (targets is None) == (items is None):
            raise ValueError("give either per-class targets (--quota) or a number of items (--items)")
        if per_prompt < 1:
            raise ValueError(f"--per-prompt must be >= 1, got {per_prompt}")
        self.label_of, self.targets, self.items = label_of, targets, items
        self.start, self.per_prompt, self.retries = start, per_prompt, retries
        self.end = start + items if items is not None else None
        if limit is not None:                    # exhaustive mode: indices past the space do not exist
            self.end = min(self.end, limit) if self.end is not None else limit
        self.max_queued = max_queued
        self.cursor = start
        self.queued: set[int] = set()            # indices queued in this run (never planned again)
        self.succeeded: set[int] = set()         # prompts that finished without error
        self.failed: set[int] = set()            # out of retries
        self.retry: deque[Job] = deque()
        self.n_queued = 0

    # -- bookkeeping ------------------------------------------------------------------------------
    def adopt(self, job: Job) -> None:
        """A job of an earlier run still on a server: count it as in flight, never plan it again."""
        self.queued.update(job.indices)

    def finished(self, job: Job) -> None:
        self.succeeded.update(job.indices)

    def errored(self, job: Job) -> bool:
        """Count one error; True when the job goes back for another try."""
        job.errors += 1
        if job.errors <= self.retries:
            self.retry.append(job)
            return True
        self.failed.update(job.indices)
        return False

    def lost(self, job: Job) -> None:
        job.prompt_id, job.server, job.polls_unseen = None, None, 0
        self.retry.append(job)

    # -- planning ---------------------------------------------------------------------------------
    def need(self, accepted: dict[str, int], in_flight: dict[str, int]) -> dict[str, int]:
        return {label: still_needed(t, accepted.get(label, 0), in_flight.get(label, 0)) for label, t in self.targets.items()}

    def complete(self, accepted: dict[str, int], done: set[int]) -> bool:
        if self.targets is not None:
            return all(accepted.get(label, 0) >= t for label, t in self.targets.items())
        return all(i in done or i in self.succeeded or i in self.failed for i in range(self.start, self.end))

    def next_job(self, done: set[int], accepted: dict[str, int], in_flight: dict[str, int]) -> Job | None:
        need = self.need(accepted, in_flight) if self.targets is not None else None
        while self.retry:
            job = self.retry.popleft()
            if self._wanted(job.indices, done, need):
                return job
        if self.max_queued is not None and self.n_queued >= self.max_queued:
            return None
        if need is not None and not any(n > 0 for n in need.values()):
            return None
        while self.end is None or self.cursor < self.end:
            first = self.cursor
            last = first + self.per_prompt if self.end is None else min(first + self.per_prompt, self.end)
            self.cursor = last
            block = tuple(range(first, last))
            if any(i in self.queued for i in block):
                continue
            if self._wanted(block, done, need):
                self.queued.update(block)
                self.n_queued += len(block)
                return Job(block)
        return None

    def _wanted(self, block, done: set[int], need: dict[str, int] | None) -> bool:
        fresh = [i for i in block if i not in done]
        if need is None:
            return bool(fresh)
        labels = [self.label_of(i) for i in fresh]
        if not any(need.get(label, 0) > 0 for label in labels):
            return False
        for label in labels:              # reserve: these items are now in flight
            if label in need:
                need[label] -= 1
        return True

    def exhausted(self) -> bool:
        """Nothing left to plan: the index range (or exhaustive space) or --max-items is used up."""
        if self.retry:
            return False
        if self.max_queued is not None and self.n_queued >= self.max_queued:
            return True
        return self.end is not None and self.cursor >= self.end
