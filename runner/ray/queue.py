"""``python -m runner queue ... --ray [ADDRESS]``: the prompt sampler's items on Ray workers.

One Ray actor per GPU (``num_gpus=1``; on a CPU-only cluster ``num_cpus=1``, ``--ray-workers N``)
owns a ComfyUI on its node (runner/ray/worker.py) and runs blocks of item indices (the sampler is
stateless: any block is independent). The driver runs the same loop as the single-server client
(runner/loop.py: quotas, what is stored, what is in flight) over ``RayExecutor``, which stores each
block's returned items into the central dataset (nodes/store/ingest.py: one writer, one
lock, one manifest; the encoded bytes as they are). No shared file system is needed; with
``--ray-shared-output`` the workers' servers write into the central dataset themselves.

Faults: the driver restarts the workers itself. A worker whose ComfyUI died, at start-up or in a
block, or whose Ray process or node died, is ended and started again as a new actor, up to
``--ray-max-restarts`` times each with back-off (1, 2, 4 ... 30 s); its unfinished blocks go back to
the plan (item ids are the dataset's dedup key). Ray's own actor restarts are off: Ray does not
restart an actor whose start failed, and the driver could not say why it restarted. A worker out of
restarts leaves the run; the run stops only when no worker is left, naming the restarts and their
causes. A local Ray that loses its raylet or GCS stops the run at once (run it again to resume).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from contextlib import nullcontext
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
    max_restarts: int = 4                # per worker, counted by the driver
    max_task_retries: int = 4            # kept for callers; a lost block is planned again by the driver
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


def backoff(restart: int) -> float:
    """Seconds before restart number ``restart`` (1, 2, 4 ... at most 30)."""
    return float(min(30, 2 ** (restart - 1)))


class WorkerPool:
    """The run's workers, each a ``ComfyWorker`` actor, restarted here when they die."""

    def __init__(self, ray, rs: RaySettings, pending: int = 2, gpus: int = 0, driver_node: str | None = None,
                 shared_output: str | None = None, lost_cluster=None):
        """``lost_cluster()``: "raylet"/"GCS" once a local Ray lost one (``Cluster.lost``), else None."""
        self.ray, self.rs = ray, rs
        self.lost_cluster = lost_cluster or (lambda: None)
        self.pool_id = uuid.uuid4().hex[:8]
        self.remote = ray.remote(ComfyWorker)
        # one thread per block kept in flight, one more for info() and close() meanwhile
        base = dict(max_restarts=0, max_task_retries=0, max_concurrency=pending + 1)
        spec = WorkerSpec(comfyui=rs.comfyui, python=rs.python, model_dirs=dict(rs.model_dirs),
                          scratch_root=rs.scratch_root, cpu=rs.cpu, start_timeout=rs.start_timeout, pool=self.pool_id,
                          shared_output=shared_output, unreachable_after=rs.unreachable_after)
        self.gpu = bool(gpus) and not rs.servers and rs.cpu is not True
        self.workspaces: Path | None = None   # <scratch root>/dtgen-ray-<id> on this host: removed at the end
        if not rs.servers:
            from .cluster import claim_workspaces

            self.workspaces = claim_workspaces(Path(rs.scratch_root or tempfile.gettempdir()), self.pool_id)
        self.opts, self.specs, self.labels = [], [], []
        if rs.servers:
            for slot, url in enumerate(rs.servers):
                opts = dict(base, num_cpus=0)
                host = urlparse(url if "://" in url else "http://" + url).hostname
                if host in LOOPBACK and driver_node:   # the server is on this node: so is its worker
                    from ray.util.scheduling_strategies import (
                        NodeAffinitySchedulingStrategy,
                    )

                    opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(driver_node, soft=False)
                self.opts.append(opts)
                self.specs.append(asdict(spec) | {"url": url})
                self.labels.append(f"worker {slot} ({url})")
        else:
            n = rs.workers or max(1, gpus)
            for slot in range(n):
                self.opts.append(dict(base, num_gpus=1) if self.gpu else dict(base, num_cpus=1))
                self.specs.append(asdict(spec))
                self.labels.append(f"worker {slot}")
        n = len(self.specs)
        self.actors: list = [None] * n
        self.gen = [0] * n                          # +1 each time the slot's actor is ended
        self.restarts = [0] * n                     # restarts used
        self.due: list[float | None] = [None] * n   # when the slot's next actor starts (back-off)
        self.alive = [True] * n                     # False: out of restarts (or cannot start at all)
        self.up = [False] * n                       # its ComfyUI answers: blocks may go to it
        self.was_up = [False] * n
        self.infos: list[dict | None] = [None] * n
        self.used: list[str] = []                   # "worker 0: restart 1 after ..." for the last word
        self.events: list[str] = []                 # one line per event (down, restarting, up), for the run
        self._starting: dict = {}                   # ObjectRef of start() -> (slot, generation)
        for slot in range(n):
            self._create(slot)

    def _create(self, slot: int) -> None:
        actor = self.remote.options(**self.opts[slot]).remote(self.specs[slot], slot)
        self.actors[slot] = actor
        self._starting[actor.start.remote()] = (slot, self.gen[slot])

    def lost(self, slot: int, gen: int, why: str, permanent: bool = False) -> bool:
        """Generation ``gen`` of worker ``slot`` is gone (``why``: one line). It is ended and, while
        it has restarts left and ``permanent`` is False, started again after the back-off. Returns
        False for news already taken (another block of the same actor)."""
        if gen != self.gen[slot] or not self.alive[slot]:
            return False
        self.gen[slot] += 1
        self.up[slot] = False
        self._end([self.actors[slot]])
        self.actors[slot] = None
        label, most = self.labels[slot], self.rs.max_restarts
        if not permanent and self.restarts[slot] < most:
            self.restarts[slot] += 1
            n, delay = self.restarts[slot], backoff(self.restarts[slot])
            self.due[slot] = time.monotonic() + delay
            self.used.append(f"{label}: restart {n} after {why.split(' (log: ')[0]}")
            self.events.append(f"Ray {label}: {why}; restart {n} of {most} in {delay:.0f} s")
            return True
        self.alive[slot] = False
        reason = ("a new start would fail the same way" if permanent
                  else f"it has used its {most} restart(s) (--ray-max-restarts)")
        rest = "; its items are planned again on the other workers" if any(self.alive) else ""
        self.events.append(f"Ray {label} is gone: {why}; {reason}{rest}")
        return True

    def _end(self, actors, timeout: float = 10.0) -> None:
        """Stop their ComfyUIs and remove their workspaces (where their processes still run), then
        end them."""
        actors = [a for a in actors if a is not None]
        if not actors:
            return
        try:
            self.ray.wait([a.close.remote() for a in actors], num_returns=len(actors), timeout=timeout)
        except Exception:   # noqa: BLE001 - a process already gone has nothing to close
            pass
        for actor in actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:   # noqa: BLE001
                pass

    def poll(self, timeout: float = 0) -> list[int]:
        """Start the workers whose back-off is over, take in those whose ComfyUI came up (or failed
        to start); returns the slots that came up."""
        now = time.monotonic()
        for slot, due in enumerate(self.due):
            if due is not None and now >= due and self.alive[slot]:
                self.due[slot] = None
                self._create(slot)
        if not self._starting:
            waits = [d - now for d in self.due if d is not None]
            time.sleep(max(0.0, min([timeout, *waits])))
            return []
        ready, _ = self.ray.wait(list(self._starting), num_returns=len(self._starting), timeout=timeout)
        new = []
        for ref in ready:
            slot, gen = self._starting.pop(ref)
            if gen != self.gen[slot]:
                continue
            try:
                info = self.ray.get(ref)
            except self.ray.exceptions.RayError as e:   # its process (or node) died while starting
                self.lost(slot, gen, f"its Ray process died while starting ({_ray_why(e)})")
                continue
            if "error" in info:
                # no ComfyUI there, no DTGen nodes (at its first start): no restart would help
                self.lost(slot, gen, info["error"], permanent=info["permanent"] and not self.was_up[slot])
                continue
            self.infos[slot], self.up[slot], self.was_up[slot] = info, True, True
            again = f"up again (restart {self.restarts[slot]}, " if self.restarts[slot] else "up ("
            self.events.append(f"Ray {self.labels[slot]} is {again}{info['url']})")
            new.append(slot)
        return new

    def ready(self, timeout: float, every: bool = True) -> list[dict]:
        """Wait until every worker's ComfyUI answers (``every=False``: at least one; the others
        join the run when they are placed and up). A worker that cannot start: one line."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_cluster()
            self.poll(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            if not any(self.alive):
                raise RunError(self.gone())
            if all(self.up[s] or not self.alive[s] for s in range(len(self.actors))) if every else any(self.up):
                return [i for i in self.infos if i is not None]
            if time.monotonic() >= deadline:
                waiting = sum(1 for s in range(len(self.actors)) if self.alive[s] and not self.up[s])
                raise RunError(f"{waiting} Ray worker(s) did not start within {timeout:.0f} s (not enough free "
                               f"{'GPUs' if self.gpu else 'CPUs'} in the cluster, or ComfyUI slow to start)")

    def check_cluster(self) -> None:
        what = self.lost_cluster()
        if what:
            raise RunError(f"Ray lost its {what} (the Ray process that {'runs this node' if what == 'raylet' else 'keeps the cluster state'}"
                           "): run the same command again to resume")

    def gone(self) -> str:
        """The run's last word when no worker is left: the last event and the restarts used."""
        downs = [e for e in self.events if " is up" not in e]
        last = downs[-1] if downs else "no Ray worker could start"
        return f"no Ray worker is left. {last}" + (f". Restarts used: {'; '.join(self.used)}" if self.used else "")

    def close(self, timeout: float = 30.0) -> None:
        """Stop every worker's ComfyUI and remove its workspace, end the actors, then remove what a
        dead worker left in this run's workspace folder (on this host). With the raylet or GCS lost
        the servers may still be writing there: ``run_ray`` removes the folder once Ray is down."""
        if self.lost_cluster():
            return
        self._end(self.actors, timeout)
        if self.workspaces is not None:
            shutil.rmtree(self.workspaces, ignore_errors=True)


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "Error" in ln and not ln.startswith(("File ", "Traceback"))]
    return (useful or lines or [type(e).__name__])[-1][:400]


def _ray_why(e: BaseException) -> str:
    """The line of a Ray actor error that says why its process died."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for key in ("exit detail", "dead because", "node", "Error"):
        found = [ln for ln in lines if key in ln]
        if found:
            return found[-1][:300]
    return (lines or [type(e).__name__])[-1][:300]


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
        self.blocks: dict = {}             # ObjectRef -> (job, worker slot, the slot's generation)
        self._events_seen = len(pool.events)
        self.run: RunLoop | None = None

    def start(self, run: RunLoop) -> None:
        self.run = run
        if self.ingest is not None:
            self.ingest.__enter__()

    def slots(self):
        """The workers that are up, least loaded first, each up to ``pending`` blocks."""
        load = [0] * len(self.pool.actors)
        for _, slot, _ in self.blocks.values():
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
        self.blocks[ref] = (job, slot, self.pool.gen[slot])
        return True

    def _messages(self) -> None:
        for event in self.pool.events[self._events_seen:]:
            self.run.progress.message(event)
        self._events_seen = len(self.pool.events)

    def poll(self) -> list[Outcome]:
        """Workers that came up (or failed to start), then the blocks that ended, stored in one batch."""
        progress = self.run.progress
        self.pool.check_cluster()
        self.pool.poll()
        self._messages()
        if not self.blocks:
            return []
        ready, _ = self.ray.wait(list(self.blocks), num_returns=len(self.blocks), timeout=0)
        out, good = [], []
        errors = self.ray.exceptions
        for ref in ready:
            job, slot, gen = self.blocks.pop(ref)
            where, label = f"Ray {self.pool.labels[slot]}", self.pool.labels[slot]
            lost = Outcome(job, where, label, lost=True)
            if gen != self.pool.gen[slot]:             # a block of a worker already ended: planned again
                out.append(lost)
                continue
            try:
                result = self.ray.get(ref)
            except errors.RayActorError as e:          # its process or node died (or the driver ended it)
                self.pool.check_cluster()
                self.pool.lost(slot, gen, f"its Ray process died ({_ray_why(e)})")
                out.append(lost)
                continue
            except errors.RayTaskError as e:           # an exception in the worker's code: say it, stop
                raise RunError(f"Ray {label}: {_one_line(e)}") from None
            except errors.RayError as e:               # the result is lost (object store, owner): plan again
                self.pool.check_cluster()
                progress.message(f"a block of Ray {label} was lost ({_one_line(e)}); its items are planned again")
                out.append(lost)
                continue
            if result.get("gone"):                     # its ComfyUI died: a new worker takes over
                self.pool.lost(slot, gen, result["gone"])
                out.append(lost)
                continue
            if result.get("rejected"):
                raise RunError(result["rejected"])
            if result.get("error"):
                out.append(Outcome(job, where, label, error=result["error"]))
                continue
            outcome = Outcome(job, where, label)
            out.append(outcome)
            good.append((outcome, result))
        self._messages()
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
        return [job for job, _, _ in self.blocks.values()]

    def stalled(self) -> bool:
        self.pool.check_cluster()
        if not any(self.pool.alive):
            raise RunError(self.pool.gone() + "; run the same command again to resume")
        if not any(self.pool.up):   # none up (starting, restarting, not enough GPUs free?): wait for one
            self.pool.poll(timeout=self.run.cfg.poll)
            return False
        return True

    def status(self) -> tuple[int, str]:
        alive = sum(self.pool.alive)
        return (sum(len(job.indices) for job, _, _ in self.blocks.values()),
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
    """The whole ``--ray`` command: join or start Ray, start the workers, run, clean up. Without
    ``progress`` (the command line) Ray's own output goes to a log file (``RayLog``), named once."""
    from .cluster import Cluster, RayLog

    check_workflow(wf, settings)
    num_cpus = rs.num_cpus or max(rs.workers or 1, len(rs.servers), os.cpu_count() or 1)
    cluster = Cluster(rs.address, num_cpus=num_cpus)   # imports ray: its log handlers keep the stderr of now
    with RayLog() if progress is None else nullcontext() as log:
        if progress is None:
            progress = Progress(log.stream)
        pool = None
        try:
            with cluster:
                if log is not None:   # once Ray runs (a refusal before leaves no log to name)
                    progress.message(f"Ray's own messages go to {log.path}")
                shared = str(Path(settings.output_dir).resolve()) if rs.shared_output else None
                pool = WorkerPool(cluster.ray, rs, settings.pending, gpus=0 if rs.cpu else cluster.gpus,
                                  driver_node=cluster.node_id(), shared_output=shared, lost_cluster=cluster.lost)
                try:
                    what = ("existing ComfyUI servers" if rs.servers else "a ComfyUI on 1 GPU each" if pool.gpu
                            else "a ComfyUI on CPU each")
                    progress.message(f"Ray: {len(pool.actors)} worker(s), {what}")
                    pool.ready(rs.start_timeout + 60, every=False)   # the others join the run when they are up
                    run = RayQueueRun(wf, sampler, settings, pool, progress, shared_output=rs.shared_output)
                    result = run.run()
                    if pool.used:
                        progress.message(f"Ray restarts used: {'; '.join(pool.used)}")
                    return result
                finally:
                    pool.close()
        finally:   # once the local Ray and its servers are stopped (after a lost raylet or GCS, only now)
            if pool is not None and pool.workspaces is not None:
                shutil.rmtree(pool.workspaces, ignore_errors=True)
