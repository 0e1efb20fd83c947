"""What every queue run shares, whatever runs its prompts (one ComfyUI over HTTP, or Ray workers):
its settings and result, the source names, the budgets and quotas, and the policies of the run
loop (loop.py) and its executors (building the planner, errors in a row, a prompt the server
forgot, a foreign prompt pack).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .planner import SCAN, Job, Planner

# The sources of a run. Records (and quotas) name them GENERATED / COPY_PASTE; --mix and the
# summary call the prompt sampler's images "sd".
GENERATED, COPY_PASTE = "generated", "copy_paste"
FLAG_NAME = {GENERATED: "sd", COPY_PASTE: "copy_paste"}
MIX_SOURCES = tuple(FLAG_NAME.values())

MAX_ERRORS_IN_A_ROW = 5
UNSEEN_POLLS_LOST = 2   # polls in which the server knew nothing of a prompt: it was lost (server restarted)


class RunError(RuntimeError):
    """The run stopped; the message is one line saying why and what to do."""


class QuotaNotReached(RunError):
    """Nothing left to try (the item range or --max-items is used up) and a class is below its quota;
    what was made stays in the dataset."""


@dataclass
class RunSettings:
    server: str
    targets: dict[str, int] | None = None
    items: int | None = None
    start: int = 0
    per_prompt: int = 1
    pending: int = 2                          # prompts kept queued on the server (Ray: per worker), --pending
    retries: int = 2
    output_dir: Path | None = None
    poll: float = 0.5
    give_up_after: float = 120.0
    max_items: int | None = None
    copy_paste_quota: int = 0                 # copy-paste images per class (0: the branch is left out)
    copy_paste_max_items: int | None = None   # default: max_items_budget of the copy-paste quotas


@dataclass
class RunResult:
    dataset_dir: Path | None
    counts: dict
    queued: int
    items_done: int
    failed: list[int]
    elapsed: float
    servers: dict = field(default_factory=dict)   # server (Ray: worker) -> items finished there
    by_source: dict = field(default_factory=dict)  # "sd" / "copy_paste" -> per-class counts (several sources)
    items_by_source: dict = field(default_factory=dict)   # "sd" / "copy_paste" -> items made in this run


# -- budgets and quotas ----------------------------------------------------------------------------
def max_items_budget(per_class: Iterable[int]) -> int:
    """The default --max-items of one source: 20 x its per-class quotas, + 20."""
    return 20 * sum(per_class) + 20


def writer_quota(targets: dict[str, int] | None, copy_paste_quota: int, other: dict[str, int]) -> int | None:
    """The writers' quota_per_class, a safety net that must never drop an item the plan needs. A
    writer counts the accepted images of every source, so the net is, per class, the sum of the
    quotas in play (SD target + copy-paste quota) plus what other sources (``other``: accepted per
    class outside the sources in play) already hold, and the largest of those over the classes.
    None (the graph's own value) for --items without copy-paste."""
    if targets is None and not copy_paste_quota:
        return None
    sd = targets or {}
    return copy_paste_quota + max((sd.get(label, 0) + other.get(label, 0) for label in set(sd) | set(other)),
                                  default=0)


def build_planner(sampler, cfg: RunSettings, targets: dict[str, int] | None) -> Planner:
    """The planner of the sampler's items (``sampler`` None: a copy-paste-only graph, nothing to plan)."""
    limit = sampler.total if sampler is not None and sampler.mode == "exhaustive" else None
    return Planner(sampler.label_of if sampler is not None else str, targets=targets, items=cfg.items,
                   start=cfg.start, per_prompt=cfg.per_prompt, limit=limit, retries=cfg.retries,
                   max_queued=cfg.max_items)


# -- policies --------------------------------------------------------------------------------------
def in_flight_labels(jobs: Iterable[Job], done: set[int], label_of) -> dict[str, int]:
    """Per class, the sampler's items in flight that the dataset does not hold yet."""
    out: dict[str, int] = {}
    for job in jobs:
        for i in job.indices:
            if i not in done:
                label = label_of(i)
                out[label] = out.get(label, 0) + 1
    return out


def item_span(job: Job) -> str:
    """``7`` or ``4..7``: the items of a job, for messages."""
    i = job.indices
    return str(i[0]) if len(i) == 1 else f"{i[0]}..{i[-1]}"


class ErrorStreak:
    """Prompts that failed in a row; the run stops at MAX_ERRORS_IN_A_ROW."""

    def __init__(self, limit: int = MAX_ERRORS_IN_A_ROW):
        self.limit, self.count = limit, 0

    def ok(self) -> None:
        self.count = 0

    def failed(self, error: str) -> None:
        self.count += 1
        if self.count >= self.limit:
            raise RunError(f"{self.count} prompts in a row failed; last error: {error}; fix it and run the same "
                           "command again to resume")


def item_failed_message(job: Job, where: str, error: str, retried: bool) -> str:
    return (f"item {item_span(job)} failed on {where}: {error}"
            + (" (will retry)" if retried else f" (gave up after {job.errors} tries)"))


def lost_when_unseen(unseen_polls: int) -> bool:
    """Neither queued nor in the history this many polls in a row: the server was restarted without it."""
    return unseen_polls >= UNSEEN_POLLS_LOST


def pack_mismatch(pack, whose: str, fix: str) -> RunError:
    """The prompt pack that made the items is not the local copy: the client's indices mean other prompts."""
    return RunError(f"{whose} prompt pack {pack.name!r} differs from the local copy ({pack.source}); {fix}")


def why_short(cfg: RunSettings, planner: Planner, sampler, accepted, what: str = "quota") -> str:
    """Why the sampler's items ran out before the quota (or --items) was met: one line."""
    if cfg.targets is None:
        return f"{len(planner.failed)} item(s) failed after retries: {sorted(planner.failed)[:10]}"
    short = {k: f"{accepted.get(k, 0)}/{t}" for k, t in cfg.targets.items() if accepted.get(k, 0) < t}
    if planner.max_queued is not None and planner.n_queued >= planner.max_queued:
        why = f"--max-items {planner.max_queued} reached (the filter rejects too much?)"
    elif sampler.mode == "exhaustive":
        why = "the exhaustive prompt space is used up"
    elif planner.dry and not planner.failed:
        why = (f"the sampler offers no item of {', '.join(sorted(k for k in short))} among its next {SCAN} items "
               "(is the class sampled? check the pack's weights and --set ID.classes)")
    else:
        why = f"{len(planner.failed)} item(s) failed after retries"
    return f"{what} not reached for {short}: {why}; raise --max-items, loosen the filter or lower --quota"
