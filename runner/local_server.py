"""Find a ComfyUI install and run it in a workspace of its own, with this pack linked in.

The user's ComfyUI tree is never written to: the server runs with ``--base-directory`` set to the
workspace (custom_nodes/dtgen -> this checkout, output/, input/, temp/, user/) and reads models
through an ``extra_model_paths.yaml`` listing the install's models folder plus any extra folders.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .api import ComfyAPI, ComfyError

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "dtgen"
MODEL_FOLDERS = ("checkpoints", "loras", "vae", "text_encoders", "clip", "diffusion_models", "unet",
                 "open_clip", "dtgen_prompts")
INSTALL_HINT = ("install it with `pip install comfy-cli && comfy --skip-prompt install --cpu` (needs the "
                "network) or point COMFYUI_PATH (or --comfyui) at a ComfyUI folder")


# Servers started with ``die_with_parent=True`` and not stopped yet: stopped at interpreter exit.
TIED: set[subprocess.Popen] = set()
PR_SET_PDEATHSIG = 1


class LocalServerError(RuntimeError):
    """Finding or starting ComfyUI failed; the message is one line saying what to do."""


class ServerExited(LocalServerError):
    """ComfyUI exited during start-up: ``code`` its exit status (negative: the signal that killed
    it), ``reason`` the log line that says why (``exit_reason``), ``log`` its log file."""

    def __init__(self, code: int, reason: str, log: Path):
        super().__init__(f"ComfyUI exited during start-up: {reason}; see {log}")
        self.code, self.reason, self.log = code, reason, log

    def __reduce__(self):
        return type(self), (self.code, self.reason, self.log)


def comfyui_candidates(explicit=None) -> list[Path]:
    paths = [Path(explicit).expanduser()] if explicit else []
    if os.environ.get("COMFYUI_PATH"):
        paths.append(Path(os.environ["COMFYUI_PATH"]).expanduser())
    paths.append(Path.home() / "comfy" / "ComfyUI")
    return paths


def find_comfyui(explicit=None) -> Path:
    looked = comfyui_candidates(explicit)
    for path in looked:
        if (path / "main.py").is_file() and (path / "comfy").is_dir():
            return path.resolve()
    raise LocalServerError(f"no ComfyUI found (looked in {', '.join(map(str, looked))}); {INSTALL_HINT}")


def comfy_python(comfyui: Path, explicit=None) -> str:
    """The Python that runs ComfyUI: --python, else a venv next to it, else this one."""
    if explicit:
        return str(explicit)
    for venv in (comfyui / ".venv", comfyui / "venv", comfyui.parent / ".venv", comfyui.parent / "venv"):
        for exe in ("bin/python", "Scripts/python.exe"):
            if (venv / exe).is_file():
                return str(venv / exe)
    return sys.executable


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def link_pack(workspace: Path) -> Path:
    """custom_nodes/dtgen -> this checkout, as a symlink (the checkout is never copied)."""
    nodes = workspace / "custom_nodes"
    nodes.mkdir(parents=True, exist_ok=True)
    link = nodes / PACK_NAME
    if link.is_symlink() and link.resolve() != ROOT:
        link.unlink()
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    return link


def write_model_paths(workspace: Path, comfyui: Path | None, extra: dict[str, list[Path]] | None = None) -> Path:
    """extra_model_paths.yaml: the install's models folder (unless ``comfyui`` is None) + ``extra``."""
    lines = []
    if comfyui is not None:
        lines += ["comfyui_install:", f"    base_path: {comfyui / 'models'}"]
        lines += [f"    {folder}: {folder}" for folder in MODEL_FOLDERS]
    if extra:
        lines.append("dtgen_extra:")
        for folder, paths in extra.items():
            lines.append(f"    {folder}: |")
            lines.extend(f"        {p}" for p in paths)
    cfg = workspace / "extra_model_paths.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


class LocalServer:
    """``main.py`` of ``comfyui`` on 127.0.0.1:``port``, all its files under ``workspace``.

    ``install_models=False`` leaves the install's own models folder out (tests see only the
    folders in ``model_dirs``); ``log_name`` names the log file in the workspace.

    The server runs in a session of its own, so it outlives this process unless stopped (the demo's
    ``--keep-server``). ``die_with_parent=True`` (tests) ties it to this process instead: it is
    stopped at interpreter exit and, on Linux, killed by the kernel when the thread that started it
    dies (PR_SET_PDEATHSIG), so a killed test run leaves no server behind.
    """

    def __init__(self, comfyui: Path, workspace: Path, port: int, python: str | None = None,
                 model_dirs: dict[str, list[Path]] | None = None, cpu: bool = True,
                 output_dir: Path | None = None, extra_args=(), install_models: bool = True,
                 log_name: str | None = None, die_with_parent: bool = False):
        self.comfyui, self.workspace, self.port = Path(comfyui), Path(workspace), port
        self.python = python or comfy_python(self.comfyui)
        self.model_dirs, self.cpu, self.extra_args = model_dirs or {}, cpu, list(extra_args)
        self.output_dir = Path(output_dir) if output_dir else self.workspace / "output"
        self.install_models, self.log_name = install_models, log_name
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workspace / (self.log_name or f"server-{self.port}.log")

    def start(self, timeout: float = 180.0) -> LocalServer:
        for sub in ("input", "temp", "user", "models"):
            (self.workspace / sub).mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        link_pack(self.workspace)
        cfg = write_model_paths(self.workspace, self.comfyui if self.install_models else None, self.model_dirs)
        cmd = [self.python, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.workspace), "--extra-model-paths-config", str(cfg),
               "--output-directory", str(self.output_dir), "--input-directory", str(self.workspace / "input"),
               "--temp-directory", str(self.workspace / "temp"), "--user-directory", str(self.workspace / "user"),
               "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
               *(["--cpu"] if self.cpu else []), *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", DO_NOT_TRACK="1")
        # the preexec_fn takes no locks and imports nothing (prctl, getppid), so threads do not matter
        preexec = _pdeathsig_preexec() if self.die_with_parent else None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.comfyui, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True, preexec_fn=preexec)  # noqa: PLW1509
        if self.die_with_parent:
            TIED.add(self.proc)
        try:
            self._wait_until_up(timeout)
        except BaseException:
            self.stop()  # a failed or interrupted start leaves no process
            raise
        return self

    def _wait_until_up(self, timeout: float) -> None:
        api, deadline = ComfyAPI(self.url, timeout=2), time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerExited(self.proc.returncode, self.exit_reason(), self.log_path)
            try:
                api.system_stats()
                return
            except ComfyError:
                time.sleep(0.3)
        raise LocalServerError(f"ComfyUI did not answer within {timeout:.0f} s; see {self.log_path}")

    def exit_reason(self) -> str:
        """Why the server exited: the signal that killed it, else the line of its log that says why."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_TAIL))
                text = f.read().decode(errors="replace")
        except OSError:
            text = ""
        return exit_reason(text, self.proc.returncode if self.proc is not None else None)

    def rss_mb(self) -> float | None:
        """Resident memory of the server process (Linux /proc), in MB."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, AttributeError):
            return None
        return None

    def stop(self) -> None:
        stop_process_group(self.proc)


LOG_TAIL = 256 * 1024      # the end of a server log read for the reason it exited
HANDLED = ("Cannot import", "IMPORT FAILED")   # ComfyUI's lines after a traceback it caught (a node that
                                               # did not load), e.g. "No module named 'torchaudio'"


def exit_reason(log: str, code: int | None) -> str:
    """One line saying why a ComfyUI exited, from its exit status and the end of its log: the
    signal that killed it; else the exception line of the last traceback ComfyUI did not catch
    (one followed by "Cannot import ..." was caught: a node that did not load); else the last line
    naming an error; else the last line and the exit status."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    lines = [ln.rstrip() for ln in log.splitlines() if ln.strip()]
    found, caught = None, set()
    i = 0
    while i < len(lines):
        if lines[i].startswith("Traceback (most recent call last)"):
            j = i + 1
            while j < len(lines) and lines[j][:1].isspace():
                j += 1
            if j < len(lines):
                if j + 1 < len(lines) and lines[j + 1].lstrip().startswith(HANDLED):
                    caught.update(range(i, j + 2))
                else:
                    found = lines[j]
                i = j
        i += 1
    if found is None:
        named = [ln for n, ln in enumerate(lines) if n not in caught and not ln[:1].isspace()
                 and ("Error" in ln or "error" in ln or "Exception" in ln)]
        found = named[-1] if named else None
    status = f"exit status {code}" if code is not None else "no exit status"
    if found is None:
        return f"{status}, last log line: {lines[-1].strip()[:300]}" if lines else f"{status}, nothing in its log"
    return found.strip()[:300]


def stop_process_group(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    """Stop a server started with ``start_new_session=True``: SIGTERM its process group, SIGKILL
    if it is still there after ``timeout`` seconds."""
    if proc is None:
        return
    TIED.discard(proc)
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout)


def stop_tied() -> list[subprocess.Popen]:
    """Stop the servers started with ``die_with_parent=True`` and not stopped yet; returns those
    that were still running."""
    running = [p for p in TIED if p.poll() is None]
    for proc in list(TIED):
        stop_process_group(proc, timeout=5)
    return running


atexit.register(stop_tied)


def _pdeathsig_preexec():
    """A ``preexec_fn`` that has the kernel SIGKILL the child when its parent thread dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl, parent = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()  # looked up before the fork

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def servers_under(root: Path) -> list[tuple[int, str]]:
    """(pid, command line) of the ComfyUI processes (``main.py``) whose ``--base-directory`` lies
    under ``root``; read from Linux's /proc (elsewhere: none)."""
    root, found = Path(os.path.realpath(root)), []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if not any(Path(a).name == "main.py" for a in args) or "--base-directory" not in args[:-1]:
            continue
        base = Path(os.path.realpath(args[args.index("--base-directory") + 1]))
        if base == root or root in base.parents:
            found.append((int(entry.name), " ".join(a for a in args if a)))
    return found
