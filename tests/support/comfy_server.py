"""Start a real ComfyUI server for integration tests and talk to it over its HTTP API.

ComfyUI is found at ``$COMFYUI_PATH``, else comfy-cli's default workspace ``~/comfy/ComfyUI``.
The server is the pack's own launcher (``runner/local_server.py``): ``main.py --cpu`` on a free
loopback port with a temporary base directory (output, input, temp, user, custom_nodes/dtgen ->
this checkout) and an ``extra_model_paths.yaml`` mapping only the fixture model folders. It is
stopped through its process group, and tied to the test process (``die_with_parent``): stopped at
interpreter exit and killed with it, so no server outlives the test run.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# the launcher the demo uses (dtgen is registered by tests/conftest.py before this is imported)
from dtgen.runner.local_server import PACK_NAME, comfyui_candidates, free_port  # noqa: F401 (re-exported for tests)


def find_comfyui() -> Path | None:
    for path in comfyui_candidates():
        if (path / "main.py").is_file() and (path / "comfy_api").is_dir():
            return path
    return None


def skip_reason() -> str:
    return "integration tests SKIPPED: no ComfyUI at " + ", ".join(str(p) for p in comfyui_candidates())


@dataclass
class ComfyServer:
    comfyui: Path
    base_dir: Path                     # temporary: output/, input/, temp/, user/, custom_nodes/
    model_dirs: dict[str, list[Path]] = field(default_factory=dict)  # folder name -> paths
    port: int = 0
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "server.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 120.0) -> "ComfyServer":
        """The pack's own launcher (runner/local_server.py) with this interpreter, CPU only and
        only the fixture model folders."""
        from dtgen.runner.local_server import LocalServer, LocalServerError

        self.port = self.port or free_port()
        server = LocalServer(self.comfyui, self.base_dir, self.port, python=sys.executable,
                             model_dirs=self.model_dirs, output_dir=self.output_dir,
                             extra_args=self.extra_args, install_models=False, log_name="server.log",
                             die_with_parent=True)
        try:
            server.start(timeout)
        except LocalServerError as exc:
            raise RuntimeError(f"{exc}\n--- server log ---\n{self.log()}") from exc
        finally:
            self.proc = server.proc
        return self

    def stop(self) -> None:
        from dtgen.runner.local_server import stop_process_group

        stop_process_group(self.proc)


class ComfyClient:
    """POST /prompt, follow the websocket, read /history/<id>, fetch outputs."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.client_id = str(uuid.uuid4())
        self._ws = None

    # ---- plain HTTP
    def get_json(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def post_json(self, path: str, payload: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = r.read()
                return r.status, (json.loads(body) if body else {})
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def queue(self, prompt: dict) -> dict:
        """Queue an API-format graph; returns ComfyUI's answer (prompt_id, or error + node_errors)."""
        status, body = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        body["_status"] = status
        return body

    def history(self, prompt_id: str) -> dict:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id, {})

    def view(self, filename: str, subfolder: str = "", folder_type: str = "output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
        with urllib.request.urlopen(f"{self.url}/view?{q}", timeout=60) as r:
            return r.read()

    # ---- websocket
    def connect(self):
        import websocket  # websocket-client

        ws = websocket.WebSocket()
        ws.connect(self.url.replace("http://", "ws://") + f"/ws?clientId={self.client_id}", timeout=300)
        self._ws = ws
        return self

    def close(self):
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def run(self, prompt: dict, timeout: float = 600.0) -> "RunResult":
        """Queue and wait until the prompt finished; collects websocket events on the way."""
        if self._ws is None:
            self.connect()
        answer = self.queue(prompt)
        if "prompt_id" not in answer:
            raise QueueRejected(answer)
        pid = answer["prompt_id"]
        result = RunResult(pid)
        deadline = time.time() + timeout
        while time.time() < deadline:
            msg = self._ws.recv()
            if not isinstance(msg, str):
                continue  # binary preview frames
            event = json.loads(msg)
            data = event.get("data", {})
            if data.get("prompt_id") not in (None, pid):
                continue
            result.events.append(event)
            kind = event["type"]
            if kind == "executing" and data.get("node") is None and data.get("prompt_id") == pid:
                break
            if kind == "execution_error":
                result.error = data
                break
        else:
            raise TimeoutError(f"prompt {pid} did not finish in {timeout}s")
        result.history = self.history(pid)
        return result


class QueueRejected(Exception):
    def __init__(self, answer: dict):
        self.answer = answer
        super().__init__(json.dumps(answer, indent=1)[:4000])


@dataclass
class RunResult:
    prompt_id: str
    events: list[dict] = field(default_factory=list)
    history: dict = field(default_factory=dict)
    error: dict | None = None

    def executed_nodes(self) -> list[str]:
        return [e["data"]["node"] for e in self.events if e["type"] == "executed"]

    def outputs(self, node_id: str) -> dict:
        return self.history.get("outputs", {}).get(str(node_id), {})

    def progress_events(self) -> list[dict]:
        return [e for e in self.events if e["type"] == "progress"]
