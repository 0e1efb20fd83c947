"""Which item indices to queue next: per-class quotas or a fixed range, each index at most once.
The choice is the nodes' own rule (``nodes.common.quota.pick_blocks``); this module keeps the run's
bookkeeping around it (what is queued, retried, failed).

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

from ..nodes.common.quota import pick_blocks, still_needed

SCAN = 100_000   # items past the cursor a plan looks at when the index range is endless (quota mode)


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
        self.dry = False                         # the last plan found nothing a class still needs

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
        """A job that goes back for another try, else the next block the quota still wants (the
        nodes' rule, ``common.quota.pick_blocks``, one prompt's block at a time: index order)."""
        need = self.need(accepted, in_flight) if self.targets is not None else None
        while self.retry:
            job = self.retry.popleft()
            fresh = self._fresh(job.indices, done)
            if fresh and pick_blocks([fresh], self.label_of, 1, need):
                return job
        self.dry = False
        if self.max_queued is not None and self.n_queued >= self.max_queued:
            return None
        if need is not None and not any(n > 0 for n in need.values()):
            return None
        self._skip_used(done)
        picked = pick_blocks(self._blocks(done), self.label_of, 1, need)
        if not picked:
            self.dry = True
            return None
        block = self._whole(picked[0][0])
        self.queued.update(block)
        self.n_queued += len(block)
        return Job(block)

    def _whole(self, i: int) -> tuple[int, ...]:
        """The block (one prompt's start_index .. + per_prompt) that item ``i`` belongs to."""
        first = self.start + (i - self.start) // self.per_prompt * self.per_prompt
        last = first + self.per_prompt if self.end is None else min(first + self.per_prompt, self.end)
        return tuple(range(first, last))

    def _fresh(self, block, done: set[int]) -> tuple[int, ...]:
        return tuple(i for i in block if i not in done)

    def _skip_used(self, done: set[int]) -> None:
        """Move the cursor past the blocks already queued or stored (they are never planned again)."""
        while self.end is None or self.cursor < self.end:
            block = self._whole(self.cursor)
            if not all(i in self.queued or i in done for i in block):
                return
            self.cursor = block[-1] + 1

    def _blocks(self, done: set[int]):
        """The fresh items of each block from the cursor on that has no item queued, to the end of the
        range (or ``SCAN`` items past the cursor when the range is endless)."""
        first, end = self.cursor, self.end if self.end is not None else self.cursor + SCAN
        while first < end:
            block = self._whole(first)
            first = block[-1] + 1
            if not any(i in self.queued for i in block) and (fresh := self._fresh(block, done)):
                yield fresh

    def exhausted(self) -> bool:
        """Nothing left to plan: the index range (or exhaustive space) or --max-items is used up, or
        the last plan found no item of a class that still needs images."""
        if self.retry:
            return False
        if self.max_queued is not None and self.n_queued >= self.max_queued:
            return True
        return self.dry or (self.end is not None and self.cursor >= self.end)
