"""The launcher's servers never outlive what started them: ``LocalServer`` on a stand-in ComfyUI
(a ``main.py`` that answers /system_stats and, with ``--worker``, starts a child of its own) is
stopped with its process group, after a failed start, at interpreter exit, and by the kernel when a
``die_with_parent`` owner is SIGKILLed; the session-end check finds servers by base directory."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from dtgen.runner import local_server
from dtgen.runner.local_server import LocalServer, free_port, servers_under, stop_tied
from support.pkg import BOOTSTRAP

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")

FAKE_MAIN = textwrap.dedent("""
    import http.server, json, subprocess, sys
    args = sys.argv
    port, base = int(args[args.index("--port") + 1]), args[args.index("--base-directory") + 1]
    if "--worker" in args:
        worker = subprocess.Popen(["sleep", "300"])
        open(base + "/worker.pid", "w").write(str(worker.pid))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"system": {}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
""")


@pytest.fixture(autouse=True)
def tied(monkeypatch):
    """A registry of this test's own (the session's servers stay out of reach of stop_tied)."""
    monkeypatch.setattr(local_server, "TIED", set())
    return local_server.TIED


@pytest.fixture
def fake_comfyui(tmp_path):
    root = tmp_path / "ComfyUI"
    (root / "comfy").mkdir(parents=True)
    (root / "main.py").write_text(FAKE_MAIN)
    return root


def server(comfyui, workspace, **kw) -> LocalServer:
    return LocalServer(comfyui, workspace, free_port(), python=sys.executable, install_models=False, **kw)


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # an orphan's zombie may linger where PID 1 does not reap


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_stop_ends_the_server_and_its_children(fake_comfyui, tmp_path, tied):
    s = server(fake_comfyui, tmp_path / "ws", extra_args=["--worker"], die_with_parent=True).start(timeout=30)
    worker = int((tmp_path / "ws" / "worker.pid").read_text())
    try:
        assert s.proc in tied and running(s.proc.pid) and running(worker)
        assert [pid for pid, _ in servers_under(tmp_path)] == [s.proc.pid]
        assert servers_under(tmp_path / "ws" / "output") == []
    finally:
        s.stop()
    assert s.proc.poll() is not None and gone(worker)
    assert s.proc not in tied and servers_under(tmp_path) == []


def test_a_failed_start_leaves_no_process(fake_comfyui, tmp_path, monkeypatch, tied):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(local_server.ComfyAPI, "system_stats", interrupted)
    s = server(fake_comfyui, tmp_path / "ws", die_with_parent=True)
    with pytest.raises(KeyboardInterrupt):
        s.start(timeout=30)
    assert s.proc.poll() is not None and s.proc not in tied and servers_under(tmp_path) == []


def test_stop_tied_stops_what_is_left(fake_comfyui, tmp_path, tied):
    mine = server(fake_comfyui, tmp_path / "tied", die_with_parent=True).start(timeout=30)
    kept = server(fake_comfyui, tmp_path / "kept").start(timeout=30)  # e.g. the demo's --keep-server
    try:
        assert tied == {mine.proc}
        assert stop_tied() == [mine.proc]
        assert mine.proc.poll() is not None and not tied
        assert running(kept.proc.pid)
    finally:
        mine.stop()
        kept.stop()


OWNER = BOOTSTRAP + textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from dtgen.runner.local_server import LocalServer, free_port
    comfyui, workspace, how = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    s = LocalServer(comfyui, workspace, free_port(), python=sys.executable, install_models=False,
                    die_with_parent=how != "keep").start(timeout=30)
    print(s.proc.pid, flush=True)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("how", ["exit", "sigkill", "keep"])
def test_a_server_outlives_its_owner_only_when_not_tied(fake_comfyui, tmp_path, how):
    done = subprocess.run([sys.executable, "-c", OWNER, str(fake_comfyui), str(tmp_path / "ws"), how],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == (-signal.SIGKILL if how == "sigkill" else 0), done.stderr
    pid = int(done.stdout.split()[0])
    try:
        if how == "keep":  # not tied, like the demo's --keep-server: still serving
            time.sleep(0.5)
            assert running(pid) and [p for p, _ in servers_under(tmp_path)] == [pid]
        else:
            assert gone(pid), f"server {pid} outlived its owner ({how})"
            assert servers_under(tmp_path) == []
    finally:
        if running(pid):
            os.killpg(pid, signal.SIGKILL)


# ------------------------------------------------------------------- why a server exited, in one line
CAUGHT = """Setting user directory to: /w0/user
Traceback (most recent call last):
  File "/ComfyUI/nodes.py", line 2131, in load_custom_node
    import torchaudio
ModuleNotFoundError: No module named 'torchaudio'

Cannot import /ComfyUI/comfy_extras/nodes_audio.py module for custom nodes: No module named 'torchaudio'
Starting server
"""


@pytest.mark.parametrize("log, code, reason", [
    (CAUGHT, -9, "killed by SIGKILL"),
    (CAUGHT + "Traceback (most recent call last):\n  File \"main.py\", line 9\n    start()\n"
     "RuntimeError: CUDA error: out of memory\n", 1, "RuntimeError: CUDA error: out of memory"),
    (CAUGHT + "usage: main.py [-h]\nmain.py: error: unrecognized arguments: --bogus\n", 2,
     "main.py: error: unrecognized arguments: --bogus"),
    (CAUGHT, 3, "exit status 3, last log line: Starting server"),
    ("", 1, "exit status 1, nothing in its log"),
])
def test_the_reason_a_server_exited_is_the_line_that_says_why(log, code, reason):
    """Not a line of a traceback ComfyUI caught (a node that did not load) nor "Setting ..." lines."""
    from dtgen.runner.local_server import exit_reason

    assert exit_reason(log, code) == reason


def test_a_server_exiting_during_start_up_names_the_reason(tmp_path, tied):
    """A ComfyUI whose main.py fails: ServerExited with the exception line and the log file."""
    from dtgen.runner.local_server import ServerExited

    comfy = tmp_path / "ComfyUI"
    (comfy / "comfy").mkdir(parents=True)
    (comfy / "main.py").write_text("print('Setting user directory to: x')\nraise RuntimeError('bad --base-directory')\n")
    with pytest.raises(ServerExited) as e:
        server(comfy, tmp_path / "ws").start(timeout=60)
    assert e.value.code == 1 and e.value.reason == "RuntimeError: bad --base-directory"
    assert str(e.value) == f"ComfyUI exited during start-up: RuntimeError: bad --base-directory; see {e.value.log}"
