"""One worker of a ``--ray`` run: a ComfyUI server on its node, running blocks of item indices.

Plain Python, no ``ray`` import at module level: the driver makes it a Ray actor
(``ray.remote(ComfyWorker)``, one per GPU). The worker starts a ComfyUI with this pack on loopback
(``local_server.LocalServer``, tied to the worker: it dies with it) or uses an existing one given
by URL, and runs one block of the prompt sampler's indices per call. Its ComfyUI writes into a
*scratch* dataset on this node; after each block the worker reads the block's new records and
files (``nodes/store/ingest.ScratchReader``, which deletes the files once read) and returns them as
bytes through Ray's object store; the driver stores them into the central dataset. The scratch
dataset keeps its manifest and embeddings: the filter's history on this worker.

With ``shared_output`` the server writes straight into the central dataset (a folder every node
sees at the same path) and a block returns no items.

Faults: nothing here raises out of the constructor or exits the process. ``start()`` starts (or
reaches) the ComfyUI and answers its info or ``{"error": one line, "permanent": ...}``; a block
whose ComfyUI died (or an existing one stopped answering) answers ``{"gone": one line}``. The
driver (runner/ray/queue.py) then ends this actor and starts a new one, counting the restarts
(``--ray-max-restarts``, with back-off), and plans the block's items again. The item ids are the
dataset's dedup key, so a block run twice is stored once.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ...nodes.store import manifest
from ...nodes.store.ingest import ScratchReader
from ..api import (
    ComfyAPI,
    ComfyError,
    GraphRejected,
    ServerUnreachable,
    execution_error,
    writer_dataset_path,
)
from ..local_server import LocalServer, LocalServerError, ServerExited, find_comfyui, free_port
from ..run import lost_when_unseen
from ..workflow import SAMPLER, Workflow

SCRATCH = "dtgen_ray_scratch"   # folder of the scratch datasets, in the server's output folder
MARK = "dtgen_ray"              # key in a prompt's extra_data


class WorkerError(RuntimeError):
    """A block cannot run on this worker; the message is one line saying what to do."""


@dataclass
class WorkerSpec:
    comfyui: str | None = None           # ComfyUI folder on the node (default: $COMFYUI_PATH, ~/comfy/ComfyUI)
    python: str | None = None            # Python that runs it (default: its venv, else the worker's)
    model_dirs: dict = field(default_factory=dict)   # models folder name -> [paths on the node]
    url: str | None = None               # an existing ComfyUI to use instead of starting one
    scratch_root: str | None = None      # the started server's workspace root (default: the node's temp dir)
    shared_output: str | None = None     # the server writes into this folder (seen by every node)
    cpu: bool | None = None              # ComfyUI --cpu (default: when Ray gave this worker no GPU)
    start_timeout: float = 300.0
    unreachable_after: float = 30.0      # an existing server silent this long: the worker exits
    store_timeout: float = 120.0         # + 2 s per item: a finished block's records must be in the manifest
    pool: str = "pool"                   # names the workspace: <scratch_root>/dtgen-ray-<pool>/w<slot>


def _gpu_ids() -> list:
    try:
        import ray

        return list(ray.get_gpu_ids()) if ray.is_initialized() else []
    except ImportError:
        return []


def _with_log(reason: str, log) -> str:
    """The reason, and the log to read unless a signal killed it (the log says nothing then)."""
    return reason if reason.startswith("killed by ") else f"{reason} (log: {log})"


class _Gone(Exception):
    """Its ComfyUI died or stopped answering: the block answers ``{"gone": why}``."""


class ComfyWorker:
    def __init__(self, spec: dict | WorkerSpec, slot: int = 0):
        """Only remembers its settings: an exception here would end the actor for good (Ray does not
        restart an actor whose constructor raised), so the ComfyUI starts in ``start()``."""
        self.spec = spec if isinstance(spec, WorkerSpec) else WorkerSpec(**spec)
        self.slot = slot
        self.lock = threading.Lock()
        self.client_id = str(uuid.uuid4())
        self.readers: dict[str, ScratchReader] = {}
        self.shared_seen: dict[str, tuple[set, int]] = {}   # shared dataset -> (indices seen, offset read)
        self.names: dict[str, tuple[int, set]] = {}   # run -> (generation, indices seen in that scratch)
        self.workspace: Path | None = None
        self.server: LocalServer | None = None
        self.api: ComfyAPI | None = None
        self.closing = False

    # -- the server ------------------------------------------------------------------------
    def start(self) -> dict:
        """Start its ComfyUI (or reach the existing one) and check it has this pack. Returns
        ``info()``, or ``{"error": one line, "permanent": bool}`` (permanent: a new try would fail
        the same way: no ComfyUI there, no DTGen nodes in it). Never raises."""
        try:
            if self.spec.url:   # a server someone runs: it answers now, or soon after a restart of its own
                self.api = ComfyAPI(self.spec.url)
                self._wait_up(self.spec.unreachable_after)
            else:
                self._start_server()
            if not self.api.has_node(SAMPLER):
                return {"error": f"ComfyUI at {self.api.url} has no DTGen nodes: install this pack in its "
                                 "custom_nodes folder and restart it", "permanent": True}
        except ServerExited as e:   # killed, or out of (GPU) memory while the last one let go: try again
            return {"error": f"its ComfyUI exited during start-up: {_with_log(e.reason, e.log)}", "permanent": False}
        except LocalServerError as e:
            return {"error": str(e), "permanent": self.server is None}   # no ComfyUI there: permanent
        except ComfyError as e:
            if self.server is not None:   # its own ComfyUI: why it stopped, not a hint for a server the user runs
                return {"error": self._own_server_gone(" during start-up"), "permanent": False}
            return {"error": str(e), "permanent": False}
        except Exception as e:   # noqa: BLE001 - anything else: one line for the driver, not a dead actor
            return {"error": f"{type(e).__name__}: {e}"[:400], "permanent": True}
        return self.info()

    def _start_server(self) -> None:
        root = Path(self.spec.scratch_root or tempfile.gettempdir()) / f"dtgen-ray-{self.spec.pool}"
        self.workspace = root / f"w{self.slot}"
        shutil.rmtree(self.workspace, ignore_errors=True)   # a restarted worker starts clean
        cpu = self.spec.cpu if self.spec.cpu is not None else not _gpu_ids()
        output = Path(self.spec.shared_output) if self.spec.shared_output else self.workspace / "output"
        models = {k: [Path(p) for p in v] for k, v in (self.spec.model_dirs or {}).items()}
        comfyui = find_comfyui(self.spec.comfyui)
        self.server = LocalServer(comfyui, self.workspace, free_port(), python=self.spec.python,
                                  model_dirs=models, cpu=cpu, output_dir=output, log_name="server.log",
                                  die_with_parent=True)
        self.server.start(self.spec.start_timeout)
        self.api = ComfyAPI(self.server.url)

    def _started(self) -> None:
        """Used as a plain object (tests): start on the first block."""
        if self.api is None:
            out = self.start()
            if "error" in out:
                raise WorkerError(out["error"])

    def _wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.api.system_stats()
                return
            except ComfyError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)

    def _server_gone(self, why: str) -> None:
        """The block ends with ``{"gone": why}``: the driver replaces this worker and plans its items again."""
        raise _Gone(f"Ray worker {self.slot} is closing" if self.closing else why)

    def _own_server_gone(self, when: str = "") -> str:
        """Why its own ComfyUI no longer answers: the way it exited, or that it stopped answering."""
        proc = self.server.proc
        if proc.poll() is None:
            try:
                proc.wait(timeout=1.0)   # a dying server: wait for its exit status
            except Exception:   # noqa: BLE001 - still running
                return f"its ComfyUI stopped answering HTTP{when} (log: {self.server.log_path})"
        return f"its ComfyUI exited{when}: {_with_log(self.server.exit_reason(), self.server.log_path)}"

    def info(self) -> dict:
        try:
            import ray

            node = ray.util.get_node_ip_address() if ray.is_initialized() else None
        except ImportError:
            node = None
        return {"slot": self.slot, "url": self.api.url if self.api is not None else None, "pid": os.getpid(), "node": node, "gpus": _gpu_ids(),
                "server_pid": self.server.proc.pid if self.server is not None else None,
                "workspace": str(self.workspace) if self.workspace else None,
                "log": str(self.server.log_path) if self.server is not None else None}

    # -- one block -------------------------------------------------------------------------
    def run_block(self, block: dict) -> dict:
        """``block``: run (a token per driver run), graph (the API graph of these items),
        indices, writer (the writer node id), dataset (the central dataset's name), stream (the
        sampler's). Returns ``items`` (``EncodedItem``s), or ``error`` (the graph failed: the
        driver retries it) or ``rejected`` (ComfyUI refused the graph: the run stops) or ``gone``
        (its ComfyUI died: the driver replaces this worker)."""
        self._started()
        try:
            return self._run_block(block)
        except _Gone as e:
            return {"worker": self.slot, "gone": str(e)}

    def _run_block(self, block: dict) -> dict:
        t0 = time.monotonic()
        indices = [int(i) for i in block["indices"]]
        name = block["dataset"] if self.spec.shared_output else self._scratch_name(block["run"], block["dataset"], indices)
        graph = copy.deepcopy(block["graph"])
        Workflow(graph).set_dataset(name)
        extra = {MARK: {"run": block["run"], "indices": indices, "worker": self.slot}}
        while True:
            try:
                pid = self.api.queue_prompt(graph, self.client_id, extra)
                break
            except GraphRejected as e:
                return {"rejected": str(e)}
            except ServerUnreachable as e:
                self._unreachable(str(e), since=t0)   # returns once it answers again
        entry = self._wait(pid)
        t_done = time.monotonic()
        out = {"worker": self.slot, "seconds": time.monotonic() - t0, "items": []}
        error = execution_error(entry)
        if error is not None:
            return dict(out, error=error)
        path = writer_dataset_path(entry, block["writer"])
        if path is None:
            return dict(out, error=f"writer node {block['writer']} reported no dataset path")
        if not Path(path).is_dir():
            raise WorkerError(f"the server at {self.api.url} wrote {path}, which Ray worker {self.slot} cannot read: "
                              "run the worker on the server's node, or give the servers a shared output folder "
                              "(--ray-shared-output)")
        # The writer node may still be writing in the background when the prompt is done (another
        # prompt was queued behind it): wait for every item's manifest line.
        if self.spec.shared_output:
            self._wait_shared(path, block.get("stream"), indices)
            return dict(out, seconds=time.monotonic() - t0)
        with self.lock:
            reader = self.readers.setdefault(path, ScratchReader(path))
        deadline = time.monotonic() + self.spec.store_timeout + 2 * len(indices)
        got: list = []
        while True:
            with self.lock:
                got += reader.take(indices)
            missing = sorted(set(indices) - {int(it.record["index"]) for it in got})
            if not missing:
                break
            if time.monotonic() >= deadline:
                return dict(out, error=f"the writer stored no record of item(s) {missing} within "
                                       f"{deadline - t0:.0f} s (see {self._log_hint()})")
            time.sleep(0.02)
        now = time.monotonic()
        return dict(out, items=got, seconds=now - t0, store_wait=now - t_done)

    def _wait_shared(self, path: str, stream: str | None, indices: list[int], timeout: float = 30.0) -> None:
        """Until the items' lines are in the shared dataset (or ``timeout``: its writer's quota may
        have dropped them). Reads only the lines appended since the last look."""
        with self.lock:
            seen, offset = self.shared_seen.setdefault(path, (set(), 0))
        deadline = time.monotonic() + timeout
        while True:
            read = manifest.read(path, offset)
            offset = read.end
            seen.update(int(r["index"]) for r in read.records
                        if r.get("index") is not None and (stream is None or r.get("stream") == stream))
            if set(indices) <= seen or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        with self.lock:
            self.shared_seen[path] = (seen, max(offset, self.shared_seen[path][1]))

    def _log_hint(self) -> str:
        return str(self.server.log_path) if self.server is not None else f"the log of {self.api.url}"

    def _scratch_name(self, run: str, dataset: str, indices: list[int]) -> str:
        """The run's scratch dataset on this worker. Were an index of the block stored there already
        (a block tried again after a failure), the next scratch dataset takes over: the writer
        would skip that item as a duplicate, and its files are gone."""
        with self.lock:
            gen, seen = self.names.setdefault(run, (0, set()))
            if seen.intersection(indices):
                gen, seen = gen + 1, set()
                self.names[run] = (gen, seen)
            seen.update(indices)
        return f"{SCRATCH}/{run}-w{self.slot}-{os.getpid()}-{gen}/{dataset}"

    def _wait(self, pid: str) -> dict:
        """The prompt's history entry once it finished; the worker exits if its server dies, or
        if the server forgot the prompt (restarted) or stopped answering."""
        t0, polls, polls_unseen, silent_since = time.monotonic(), 0, 0, None
        while True:
            if self.server is not None and self.server.proc.poll() is not None:
                self._server_gone(self._own_server_gone())
            try:
                entry = self.api.history(pid)
                if entry is not None:
                    return entry
                polls += 1
                if polls % 20 == 0:
                    running, waiting = self.api.queue()
                    if pid in {e[1] for e in running + waiting}:
                        polls_unseen = 0
                    elif self.api.history(pid) is None:
                        polls_unseen += 1
                        if lost_when_unseen(polls_unseen):
                            self._server_gone(f"ComfyUI at {self.api.url} no longer knows prompt {pid} (restarted?)")
                silent_since = None
            except ServerUnreachable as e:
                silent_since = silent_since or time.monotonic()
                self._unreachable(str(e), since=silent_since, wait=False)
            except ComfyError:
                pass
            elapsed = time.monotonic() - t0
            time.sleep(min(0.25, max(0.02, elapsed / 20)))

    def _unreachable(self, why: str, since: float, wait: bool = True) -> None:
        """An unreachable server: a started one is gone; an existing one gets ``unreachable_after``
        seconds (``wait``: waited for here) before the worker exits."""
        if self.server is not None:
            self._server_gone(self._own_server_gone())
        deadline = since + self.spec.unreachable_after
        if not wait:
            if time.monotonic() >= deadline:
                self._server_gone(why)
            return
        while time.monotonic() < deadline:
            try:
                self.api.system_stats()
                return
            except ComfyError:
                time.sleep(1.0)
        self._server_gone(why)

    # -- the end ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the started server and delete the scratch datasets and the workspace (blocks still
        running end with an error; the driver no longer waits for them)."""
        self.closing = True
        if self.server is not None:
            self.server.stop()
        for path in list(self.readers):
            for parent in Path(path).parents:
                if parent.parent.name == SCRATCH:
                    shutil.rmtree(parent, ignore_errors=True)
                    try:
                        parent.parent.rmdir()
                    except OSError:
                        pass
                    break
        self.readers.clear()
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
            try:
                self.workspace.parent.rmdir()
            except OSError:
                pass


__all__ = ["ComfyWorker", "WorkerSpec", "WorkerError", "LocalServerError", "SCRATCH"]
