"""``python -m runner queue ... --ray [ADDRESS]``: the prompt sampler's items on Ray workers.

One Ray actor per GPU (``num_gpus=1``; on a CPU-only cluster ``num_cpus=1``, ``--ray-workers N``)
owns a ComfyUI on its node (runner/ray/worker.py) and runs blocks of item indices (the sampler is
stateless: any block is independent). The driver runs the same loop as the single-server client
(runner/loop.py: quotas, what is stored, what is in flight) over ``RayExecutor``, which stores each
block's returned items into the central dataset (nodes/store/ingest.py: one writer, one
lock, one manifest; the encoded bytes as they are). No shared file system is needed; with
``--ray-shared-output`` the workers' servers write into the central dataset themselves.

Faults are Ray's: a dead worker (its process, its ComfyUI, its node) is restarted by Ray
(``max_restarts``) and its unfinished blocks run again (``max_task_retries``); item ids are the
dataset's dedup key. This module keeps only what Ray cannot know: which items the dataset still
needs. A worker whose restarts are used up leaves the run; its blocks go back to the plan.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ...nodes.store.ingest import DatasetIngest
from ..loop import Outcome, RunLoop
from ..planner import Job
from ..progress import Progress
from ..run import RunError, RunResult, RunSettings, pack_mismatch
from ..workflow import Workflow
from .worker import ComfyWorker, WorkerSpec

LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


@dataclass
class RaySettings:
    address: str | None = None           # None: start a local Ray
    workers: int | None = None           # default: one per GPU in the cluster, else 1
    servers: list = field(default_factory=list)   # existing ComfyUI URLs: one worker each
    comfyui: str | None = None
    python: str | None = None
    model_dirs: dict = field(default_factory=dict)
    scratch_root: str | None = None
    shared_output: bool = False
    cpu: bool | None = None
    max_restarts: int = 4
    max_task_retries: int = 4
    num_cpus: int | None = None          # a local Ray's logical CPUs (default: max(workers, this machine's))
    start_timeout: float = 300.0
    unreachable_after: float = 30.0      # an existing server (--server) silent this long: its worker exits


def check_workflow(wf: Workflow, settings: RunSettings) -> None:
    """--ray runs the prompt sampler's items: refuse what it cannot plan, before Ray starts."""
    if not wf.has_sampler:
        raise RunError(f"--ray: {wf.source} has no DTGenPromptSampler; Ray workers run blocks of the sampler's "
                       "items (a copy-paste-only graph runs without --ray)")
    if settings.copy_paste_quota and settings.items is None:
        raise RunError("--ray runs the prompt sampler's items; the copy-paste branch plans from the dataset its own "
                       "server holds, which a Ray worker does not have: leave it out (--mix sd:1,copy_paste:0, or "
                       f"--set {wf.copy_paste_id}.quota_per_class=0) or queue it without --ray")


class WorkerPool:
    """The run's Ray actors, each a ``ComfyWorker``."""

    def __init__(self, ray, rs: RaySettings, pending: int = 2, gpus: int = 0, driver_node: str | None = None,
                 shared_output: str | None = None):
        self.ray = ray
        self.pool_id = uuid.uuid4().hex[:8]
        remote = ray.remote(ComfyWorker)
        # one thread per block kept in flight, one more for info() and close() meanwhile
        base = dict(max_restarts=rs.max_restarts, max_task_retries=rs.max_task_retries, max_concurrency=pending + 1)
        spec = WorkerSpec(comfyui=rs.comfyui, python=rs.python, model_dirs=dict(rs.model_dirs),
                          scratch_root=rs.scratch_root, cpu=rs.cpu, start_timeout=rs.start_timeout, pool=self.pool_id,
                          shared_output=shared_output, unreachable_after=rs.unreachable_after)
        self.gpu = bool(gpus) and not rs.servers and rs.cpu is not True
        self.actors, self.labels = [], []
        if rs.servers:
            for slot, url in enumerate(rs.servers):
                opts = dict(base, num_cpus=0)
                host = urlparse(url if "://" in url else "http://" + url).hostname
                if host in LOOPBACK and driver_node:   # the server is on this node: so is its worker
                    from ray.util.scheduling_strategies import (
                        NodeAffinitySchedulingStrategy,
                    )

                    opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(driver_node, soft=False)
                self.actors.append(remote.options(**opts).remote(asdict(spec) | {"url": url}, slot))
                self.labels.append(f"worker {slot} ({url})")
        else:
            n = rs.workers or max(1, gpus)
            opts = dict(base, num_gpus=1) if self.gpu else dict(base, num_cpus=1)
            for slot in range(n):
                self.actors.append(remote.options(**opts).remote(asdict(spec), slot))
                self.labels.append(f"worker {slot}")
        self.alive = [True] * len(self.actors)     # False: out of restarts (or never started)
        self.up = [False] * len(self.actors)       # its ComfyUI answered once: blocks may go to it
        self.infos: list[dict | None] = [None] * len(self.actors)
        self._starting = {a.info.remote(): slot for slot, a in enumerate(self.actors)}
        self.errors: list[str] = []

    def poll(self, timeout: float = 0) -> list[int]:
        """Take in workers whose ComfyUI came up (or that failed to start); returns the new ones."""
        if not self._starting:
            return []
        ready, _ = self.ray.wait(list(self._starting), num_returns=len(self._starting), timeout=timeout)
        new = []
        for ref in ready:
            slot = self._starting.pop(ref)
            try:
                self.infos[slot], self.up[slot] = self.ray.get(ref), True
                new.append(slot)
            except self.ray.exceptions.RayError as e:   # creation failed, restarts used up
                self.alive[slot] = False
                self.errors.append(f"Ray {self.labels[slot]} could not start its ComfyUI: {_one_line(e)}")
        return new

    def ready(self, timeout: float, every: bool = True) -> list[dict]:
        """Wait until every worker's ComfyUI answers (``every=False``: at least one; the others
        join the run when they are placed and up). A worker that cannot start: one line."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            if not any(self.alive):
                raise RunError(self.errors[-1] if self.errors else "no Ray worker could start")
            if all(self.up[s] or not self.alive[s] for s in range(len(self.actors))) if every else any(self.up):
                return [i for i in self.infos if i is not None]
            if time.monotonic() >= deadline:
                waiting = sum(1 for s in range(len(self.actors)) if self.alive[s] and not self.up[s])
                raise RunError(f"{waiting} Ray worker(s) did not start within {timeout:.0f} s (not enough free "
                               f"{'GPUs' if self.gpu else 'CPUs'} in the cluster, or ComfyUI slow to start)")

    def close(self, timeout: float = 30.0) -> None:
        """Stop every worker's ComfyUI and remove its scratch folders, then end the actors."""
        try:
            refs = [a.close.remote() for a, ok in zip(self.actors, self.alive) if ok]
            self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        except Exception:   # noqa: BLE001 - a worker already gone has nothing to close
            pass
        for actor in self.actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:   # noqa: BLE001
                pass


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "Error" in ln and not ln.startswith(("File ", "Traceback"))]
    return (useful or lines or [type(e).__name__])[-1][:400]


class RayExecutor:
    """The run's Ray workers (``WorkerPool``): blocks of item indices, ``pending`` per worker. The
    blocks' items come back as bytes and are stored into the central dataset here (one ingest: one
    writer, one lock, one manifest), or the workers' servers write it themselves (``shared``)."""

    def __init__(self, pool: WorkerPool, pending: int, dataset_dir: Path, quotas, shared: bool):
        self.pool, self.ray, self.pending = pool, pool.ray, pending
        self.shared_dataset = shared
        self.servers = list(pool.labels)
        self.ingest = None if shared else DatasetIngest(dataset_dir, quotas=quotas)
        self.token = uuid.uuid4().hex[:8]
        self.blocks: dict = {}             # ObjectRef -> (job, worker slot)
        self._errors_seen = len(pool.errors)
        self.run: RunLoop | None = None

    def start(self, run: RunLoop) -> None:
        self.run = run
        if self.ingest is not None:
            self.ingest.__enter__()

    def slots(self):
        """The workers that are up, least loaded first, each up to ``pending`` blocks."""
        load = [0] * len(self.pool.actors)
        for _, slot in self.blocks.values():
            load[slot] += 1
        for slot in sorted(range(len(load)), key=lambda s: load[s]):
            while self.pool.alive[slot] and self.pool.up[slot] and load[slot] < self.pending:
                yield slot
                load[slot] += 1

    def submit(self, job: Job, graph: dict, slot: int) -> bool:
        run = self.run
        block = {"run": self.token, "graph": graph, "indices": list(job.indices), "writer": run.wf.writer_id,
                 "dataset": run.dataset, "stream": run.stream}
        ref = self.pool.actors[slot].run_block.remote(block)
        job.server = self.pool.labels[slot]
        self.blocks[ref] = (job, slot)
        return True

    def poll(self) -> list[Outcome]:
        """Workers that came up (or failed to start), then the blocks that ended, stored in one batch."""
        progress = self.run.progress
        for slot in self.pool.poll():
            progress.message(f"Ray {self.pool.labels[slot]} is up ({self.pool.infos[slot]['url']})")
        for error in self.pool.errors[self._errors_seen:]:
            progress.message(error)
        self._errors_seen = len(self.pool.errors)
        if not self.blocks:
            return []
        ready, _ = self.ray.wait(list(self.blocks), num_returns=len(self.blocks), timeout=0)
        out, good = [], []
        errors = self.ray.exceptions
        for ref in ready:
            job, slot = self.blocks.pop(ref)
            where, label = f"Ray {self.pool.labels[slot]}", self.pool.labels[slot]
            try:
                result = self.ray.get(ref)
            except errors.ActorUnavailableError:       # restarting: Ray did not retry this one
                out.append(Outcome(job, where, label, lost=True))
                continue
            except errors.RayActorError as e:          # out of restarts (or its node is gone for good)
                self.pool.alive[slot] = False
                progress.message(f"Ray {label} is gone ({_one_line(e)}); its items are planned again on the other "
                                 "workers")
                out.append(Outcome(job, where, label, lost=True))
                continue
            except errors.RayTaskError as e:           # an exception in the worker's code: say it, stop
                raise RunError(f"Ray {label}: {_one_line(e)}") from None
            except errors.RayError as e:               # the result is lost (object store, owner): plan again
                progress.message(f"a block of Ray {label} was lost ({_one_line(e)}); its items are planned again")
                out.append(Outcome(job, where, label, lost=True))
                continue
            if result.get("rejected"):
                raise RunError(result["rejected"])
            if result.get("error"):
                out.append(Outcome(job, where, label, error=result["error"]))
                continue
            outcome = Outcome(job, where, label)
            out.append(outcome)
            good.append((outcome, result))
        if good:
            self._store(good)
        return out

    def _store(self, good) -> None:
        """The items of the blocks that ended well into the central dataset; a damaged one sends its
        block back to the plan."""
        run = self.run
        items = [it for _, result in good for it in result.get("items") or []]
        foreign = {it.record.get("pack_hash") for it in items} - {run.pack_hash}
        if foreign:
            raise pack_mismatch(run.sampler.pack, "the Ray workers'",
                                "give them the same pack (or pass --pack-dir with theirs)")
        if not items or self.ingest is None:
            return
        stored = self.ingest.store(items)
        for rid, why in stored.refused:
            run.progress.message(f"item {rid} arrived damaged ({why}); its block runs again")
        refused = {rid for rid, _ in stored.refused}
        for outcome, result in good:
            if {it.record["id"] for it in result.get("items") or []} & refused:
                outcome.lost = True

    def wait(self, seconds: float) -> None:
        if self.blocks:
            self.ray.wait(list(self.blocks), num_returns=1, timeout=seconds)
        else:
            time.sleep(seconds)

    def in_flight(self) -> list[Job]:
        return [job for job, _ in self.blocks.values()]

    def stalled(self) -> bool:
        if not any(self.pool.alive):
            raise RunError("every Ray worker has died and used up its restarts (--ray-max-restarts); see the "
                           "messages above, then run the same command again to resume")
        if not any(self.pool.up):   # none placed yet (not enough GPUs free?): wait for one
            self.pool.poll(timeout=self.run.cfg.poll)
            return False
        return True

    def status(self) -> tuple[int, str]:
        alive = sum(self.pool.alive)
        return (sum(len(job.indices) for job, _ in self.blocks.values()),
                f"{alive} Ray worker" + ("s" if alive != 1 else ""))

    def cancel(self) -> int:
        """Blocks still queued on the workers are not needed (or the run stops): cancel them."""
        n = len(self.blocks)
        for ref in list(self.blocks):
            try:
                self.ray.cancel(ref)
            except Exception:   # noqa: BLE001 - already finished or its worker is gone
                pass
        self.blocks.clear()
        return n


class RayQueueRun(RunLoop):
    """The run loop on Ray workers, into the central dataset ``<output_dir>/<dataset>``."""

    def __init__(self, workflow: Workflow, sampler, settings: RunSettings, pool: WorkerPool,
                 progress: Progress | None = None, shared_output: bool = False):
        check_workflow(workflow, settings)
        if settings.output_dir is None:
            raise RunError("--ray needs --output-dir: the folder of the central dataset")
        self.dataset_dir = Path(settings.output_dir).absolute() / workflow.dataset_name
        self.pool = pool
        executor = RayExecutor(pool, settings.pending, self.dataset_dir, settings.targets, shared_output)
        super().__init__(workflow, sampler, settings, executor, progress, self.dataset_dir)

    def _result(self) -> RunResult:
        result = super()._result()
        exists = (self.dataset_dir / "manifest.jsonl").is_file()
        result.dataset_dir = self.dataset_dir if exists else None
        result.by_source, result.items_by_source = {}, {}
        return result


def run_ray(wf: Workflow, sampler, settings: RunSettings, rs: RaySettings, progress: Progress | None = None) -> RunResult:
    """The whole ``--ray`` command: join or start Ray, start the workers, run, clean up."""
    from .cluster import Cluster

    check_workflow(wf, settings)
    progress = progress or Progress()
    num_cpus = rs.num_cpus or max(rs.workers or 1, len(rs.servers), os.cpu_count() or 1)
    with Cluster(rs.address, num_cpus=num_cpus) as cluster:
        shared = str(Path(settings.output_dir).resolve()) if rs.shared_output else None
        pool = WorkerPool(cluster.ray, rs, settings.pending, gpus=0 if rs.cpu else cluster.gpus,
                          driver_node=cluster.node_id(), shared_output=shared)
        try:
            what = "existing ComfyUI servers" if rs.servers else "a ComfyUI on 1 GPU each" if pool.gpu else "a ComfyUI on CPU each"
            progress.message(f"Ray: {len(pool.actors)} worker(s), {what}")
            pool.ready(rs.start_timeout + 60, every=False)   # the others join the run when they are up
            return RayQueueRun(wf, sampler, settings, pool, progress, shared_output=rs.shared_output).run()
        finally:
            pool.close()

