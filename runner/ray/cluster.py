"""Start or join the Ray cluster of a ``--ray`` run, and leave nothing running after it.

Imported only with ``--ray`` (the one place that imports ``ray`` for the driver). Without an
address the driver starts a local Ray (``ray.init(num_cpus=..., include_dashboard=False)``); a
watchdog process then outlives a killed driver (``kill -9``) long enough to stop what that Ray
started (raylet, GCS, agents, workers and their ComfyUI servers: every process it saw below the
driver's Ray processes, and every process carrying this run's ``DTGEN_RAY_RUN`` environment entry;
Linux; runner/ray/watchdog.py). With an address (``auto``, ``ray://...``,
``host:port``) the cluster is someone else's: its workers are the run's actors, which Ray ends with
the driver (and each actor's ComfyUI dies with its actor).

Ray workers import this pack as the package ``dtgen``: the driver puts a folder holding a
``dtgen`` link to this checkout on their ``PYTHONPATH`` (the image's own ``PYTHONPATH`` is kept,
so a cluster whose nodes have the pack importable as ``dtgen`` works without this checkout).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from ..local_server import PACK_NAME, ROOT

MARK = "DTGEN_RAY_RUN"
INSTALL_HINT = "pip install 'ray==2.60.0' (or pip install '.[ray]' in the checkout)"

WATCHDOG = Path(__file__).with_name("watchdog.py")   # run by path, stdlib only


def import_ray():
    try:
        import ray
    except ImportError:
        from ..run import RunError

        raise RunError(f"--ray needs Ray on this machine: {INSTALL_HINT}") from None
    return ray


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

    def __enter__(self) -> Cluster:
        (self.shim / PACK_NAME).symlink_to(ROOT, target_is_directory=True)
        runtime_env = {"env_vars": {"PYTHONPATH": f"{self.shim}{os.pathsep}${{PYTHONPATH}}"}}
        kw = dict(include_dashboard=False, logging_level=logging.WARNING, runtime_env=runtime_env)
        try:
            if self.local:
                self._start_watchdog()
                self._set_env(MARK, self.token)
                if self.temp_dir:
                    kw["_temp_dir"] = str(self.temp_dir)
                self.ray.init(num_cpus=self.num_cpus, **kw)
            else:
                self.ray.init(address=self.address, **kw)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

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
