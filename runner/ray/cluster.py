"""Start or join the Ray cluster of a ``--ray`` run, and leave nothing running after it.

Imported only with ``--ray`` (the one place that imports ``ray`` for the driver). Without an
address the driver starts a local Ray (``ray.init(num_cpus=..., include_dashboard=False)``); a
watchdog process then outlives a killed driver (``kill -9``) long enough to stop what that Ray
started (raylet, GCS, agents, workers and their ComfyUI servers: every process it saw below the
driver's Ray processes, and every process carrying this run's ``DTGEN_RAY_RUN`` environment entry;
Linux; runner/ray/watchdog.py). With an address (``auto``, ``ray://...``,
``host:port``) the cluster is someone else's: its workers are the run's actors, which Ray ends with
the driver (and each actor's ComfyUI dies with its actor).

A local Ray's raylet and GCS are watched (``lost()``): when one dies the run stops at once with one
line (run the same command again to resume) instead of waiting on Ray. An address given as
``host:port`` (or ``ray://host:port``) is tried first: nothing there is one line within seconds.
Ray's own output (its C++ logs, state dumps, warnings) goes to a log file (``RayLog``), not to the
command's stdout and stderr, which keep the summary and this run's own lines.

Each run's worker workspaces live in ``<scratch root>/dtgen-ray-<id>/``, marked with an owner file
(host, driver pid and start time): the run removes the folder when it ends, and the next run on the
same host removes those whose driver is gone (a run killed with its raylet or GCS, or ``kill -9``).

Ray workers import this pack as the package ``dtgen``: the driver puts a folder holding a
``dtgen`` link to this checkout on their ``PYTHONPATH`` (the image's own ``PYTHONPATH`` is kept,
so a cluster whose nodes have the pack importable as ``dtgen`` works without this checkout).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from ..local_server import PACK_NAME, ROOT

MARK = "DTGEN_RAY_RUN"
INSTALL_HINT = "pip install 'ray==2.60.0' (or pip install '.[ray]' in the checkout)"

WATCHDOG = Path(__file__).with_name("watchdog.py")   # run by path, stdlib only
SHUTDOWN_WAIT = 10.0    # seconds ray.shutdown() may take after its raylet or GCS died (it stops Ray's threads)
REACH_TIMEOUT = 5.0     # seconds to open a TCP connection to --ray host:port
OWNER = ".dtgen-owner"  # in a run's workspace folder: {"host", "pid", "start"} of its driver
CORE = {"raylet": "raylet", "gcs_server": "GCS"}   # a local Ray's core processes (program name -> what we call it)


def import_ray():
    try:
        import ray
    except ImportError:
        from ..run import RunError

        raise RunError(f"--ray needs Ray on this machine: {INSTALL_HINT}") from None
    return ray


def check_reachable(address: str) -> None:
    """``host:port`` or ``ray://host:port``: a TCP connection opens within seconds, else one line."""
    if address in ("auto", "local") or "://" in address and not address.startswith("ray://"):
        return
    parsed = urlparse(address if "://" in address else "tcp://" + address)
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        from ..run import RunError

        raise RunError(f"--ray {address!r}: expected auto, host:port (e.g. 10.0.0.5:6379) or ray://host:port")
    try:
        socket.create_connection((host, port), timeout=REACH_TIMEOUT).close()
    except OSError as e:
        from ..run import RunError

        why = "no such host" if isinstance(e, socket.gaierror) else "timed out" if isinstance(e, TimeoutError) \
            else e.strerror or type(e).__name__
        raise RunError(f"--ray {address}: no Ray cluster answers there ({why}); start one (`ray start --head` on that "
                       "machine) or pass its address (host:6379, ray://host:10001, auto)") from None


def _start_time(pid: int) -> str | None:
    """The start time of a running process (None: no such process, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


def _alive(pid: int, start: str | None) -> bool:
    if not sys.platform.startswith("linux"):
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    return _start_time(pid) is not None and _start_time(pid) == start


def claim_workspaces(root: Path, pool_id: str) -> Path:
    """``<root>/dtgen-ray-<pool_id>``, created with its owner file; the folders of runs whose driver
    on this host is gone are removed first."""
    remove_stale_workspaces(root)
    folder = root / f"dtgen-ray-{pool_id}"
    folder.mkdir(parents=True, exist_ok=True)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}
    (folder / OWNER).write_text(json.dumps(owner))
    return folder


def remove_stale_workspaces(root: Path) -> list[Path]:
    """Removes ``<root>/dtgen-ray-*`` folders whose owner file names a driver on this host that is
    gone; returns them. Folders without an owner file are left alone."""
    removed = []
    try:
        folders = [p for p in root.glob("dtgen-ray-*") if p.is_dir() and not p.is_symlink()]
    except OSError:
        return removed
    for folder in folders:
        try:
            owner = json.loads((folder / OWNER).read_text())
            mine = owner["host"] == socket.gethostname()
            pid, start = int(owner["pid"]), owner.get("start")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if mine and not _alive(pid, start):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class RayLog:
    """``with RayLog() as log:`` file descriptors 1 and 2 of this process go to ``log.path``
    (whatever Ray writes there: its C++ logs, state dumps, warnings, tracebacks of its threads);
    ``log.stream`` writes to the stderr from before, for this run's own lines. Python's
    ``sys.stdout``/``sys.stderr`` objects are kept (they write to the log meanwhile). An empty log
    is removed at the end."""

    def __init__(self, folder: Path | None = None):
        folder = Path(folder or tempfile.gettempdir()) / "dtgen-ray-logs"
        self.path = folder / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        self._saved: list[tuple[int, int]] = []
        self.stream = None

    def __enter__(self) -> RayLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for target in (1, 2):
                self._saved.append((target, os.dup(target)))
                os.dup2(fd, target)
        finally:
            os.close(fd)
        self.stream = os.fdopen(os.dup(self._saved[1][1]), "w", buffering=1)
        return self

    def __exit__(self, *exc) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        for target, saved in self._saved:
            os.dup2(saved, target)
            os.close(saved)
        self._saved.clear()
        if self.stream is not None:
            self.stream.close()
        try:
            if self.path.stat().st_size == 0:
                self.path.unlink()
        except OSError:
            pass


def _core_processes(driver: int) -> dict[int, tuple[str, str]]:
    """The raylet and GCS below ``driver`` (Linux /proc): pid -> (what we call it, start time)."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            if int(stat[1]) != driver:
                continue
            program = Path((entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")).name
        except (OSError, IndexError, ValueError):
            continue
        if program in CORE:
            found[int(entry.name)] = (CORE[program], stat[19].decode())
    return found


class Cluster:
    """``with Cluster(address, num_cpus) as c:`` a connected Ray; ``c.gpus``: GPUs in the cluster."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, temp_dir: str | None = None):
        self.address, self.num_cpus, self.temp_dir = address, num_cpus, temp_dir
        self.local = address is None
        self.ray = import_ray()
        self.shim = Path(tempfile.mkdtemp(prefix="dtgen-ray-pkg-"))
        self.watchdog: subprocess.Popen | None = None
        self.token = uuid.uuid4().hex
        self._saved_env: dict[str, str | None] = {}
        self.core: dict[int, tuple[str, str]] = {}   # a local Ray's raylet and GCS: pid -> (name, start time)

    def __enter__(self) -> Cluster:
        (self.shim / PACK_NAME).symlink_to(ROOT, target_is_directory=True)
        runtime_env = {"env_vars": {"PYTHONPATH": f"{self.shim}{os.pathsep}${{PYTHONPATH}}"}}
        # log_to_driver=False: the workers' and the raylet's output stays in Ray's session logs (not on stdout)
        kw = dict(include_dashboard=False, logging_level=logging.WARNING, runtime_env=runtime_env, log_to_driver=False)
        try:
            if self.local:
                self._start_watchdog()
                self._set_env(MARK, self.token)
                if self.temp_dir:
                    kw["_temp_dir"] = str(self.temp_dir)
                self.ray.init(num_cpus=self.num_cpus, **kw)
                self.core = _core_processes(os.getpid())
            else:
                check_reachable(self.address)
                self.ray.init(address=self.address, **kw)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def lost(self) -> str | None:
        """"raylet" or "GCS" when a local Ray's core process has died (None: both run, or not local)."""
        for pid, (name, start) in self.core.items():
            if not _alive(pid, start):
                return name
        return None

    @property
    def gpus(self) -> int:
        return int(self.ray.cluster_resources().get("GPU", 0))

    @property
    def cpus(self) -> int:
        return int(self.ray.cluster_resources().get("CPU", 0))

    def node_id(self) -> str:
        return self.ray.get_runtime_context().get_node_id()

    def _set_env(self, key: str, value: str) -> None:
        """Every process this Ray starts inherits the mark (the watchdog finds them by it)."""
        self._saved_env[key] = os.environ.get(key)
        os.environ[key] = value

    def _start_watchdog(self) -> None:
        if not sys.platform.startswith("linux"):
            return
        env = {k: v for k, v in os.environ.items() if k != MARK}
        self.watchdog = subprocess.Popen(
            [sys.executable, "-I", str(WATCHDOG), f"{MARK}={self.token}", str(os.getpid()), str(self.shim),
             os.path.dirname(self.ray.__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
            start_new_session=True)

    def __exit__(self, *exc) -> None:
        try:
            if self.ray.is_initialized():
                if self.lost():   # it may wait on the dead process: at most SHUTDOWN_WAIT s, the watchdog ends the rest
                    done = threading.Thread(target=self.ray.shutdown, daemon=True)
                    done.start()
                    done.join(SHUTDOWN_WAIT)
                else:
                    self.ray.shutdown()
        finally:
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if self.watchdog is not None:
                self.watchdog.stdin.close()      # the watchdog stops what is left, then exits
                try:
                    self.watchdog.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    pass
            shutil.rmtree(self.shim, ignore_errors=True)
