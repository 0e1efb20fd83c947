"""A stand-in for ComfyUI's HTTP API (the few routes the queue client uses), for fast scheduler tests.

It runs a queued DTGen graph the way the real nodes do where it matters to the client: the
prompt sampler's items from the same pack, stored by the real ``DatasetWriter`` under
``output_dir/<dataset_name>`` (accepted unless ``reject(index)``), the writer's quota_per_class
applied, the dataset path reported as the writer's text output. ``fail_once`` indices error on
their first run; ``validate(graph)`` returns ComfyUI's ``node_errors`` for a graph it refuses at
POST /prompt (empty: accepted); ``stop()`` makes the server vanish like a killed process.
"""
from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from collections import deque
from pathlib import Path

import numpy as np
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.store.writer import DatasetWriter
from dtgen.runner.packs import local_sampler
from dtgen.runner.workflow import SAMPLER, WRITER


class FakeComfy:
    def __init__(self, output_dir: Path, reject=lambda i: False, fail_once=(), delay: float = 0.02,
                 validate=lambda graph: {}):
        self.output_dir, self.reject, self.delay, self.validate = Path(output_dir), reject, delay, validate
        self.fail_once = set(fail_once)
        self.pending: deque = deque()
        self.running = None
        self.history: dict[str, dict] = {}
        self.executed: list[int] = []           # item indices run, in order (repeats visible)
        self.lock = threading.Lock()
        self.alive = True
        handler = type("H", (_Handler,), {"fake": self})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        threading.Thread(target=self._work, daemon=True).start()

    def stop(self) -> None:
        self.alive = False
        self.httpd.shutdown()
        self.httpd.server_close()

    def _work(self) -> None:
        while self.alive:
            with self.lock:
                entry = self.pending.popleft() if self.pending else None
                self.running = entry
            if entry is None:
                time.sleep(0.005)
                continue
            time.sleep(self.delay)
            if not self.alive:
                return
            try:
                result = self._execute(entry[2])
            except Exception as exc:   # reported like ComfyUI would, never a silently dead worker
                result = {"status": {"status_str": "error", "completed": False, "messages": [
                    ["execution_error", {"node_id": "11", "node_type": "DTGenDatasetWriter",
                                         "exception_type": type(exc).__name__, "exception_message": str(exc)}]]},
                          "outputs": {}}
            with self.lock:
                self.history[entry[1]] = {"prompt": entry, **result}
                self.running = None

    def _execute(self, graph: dict) -> dict:
        sampler_node = next(n for n in graph.values() if n["class_type"] == SAMPLER)
        writer_id, writer = next((k, n) for k, n in graph.items() if n["class_type"] == WRITER)
        inputs = sampler_node["inputs"]
        items = local_sampler(inputs).items(inputs["start_index"], inputs["count"])
        for it in items:
            if it.index in self.fail_once:
                self.fail_once.discard(it.index)
                return {"status": {"status_str": "error", "completed": False, "messages": [
                    ["execution_error", {"node_id": "7", "node_type": "KSampler", "exception_type": "RuntimeError",
                                         "exception_message": f"boom at {it.index}"}]]}, "outputs": {}}
        self.executed.extend(it.index for it in items)
        ds = self.output_dir / writer["inputs"]["dataset_name"]
        quota = writer["inputs"].get("quota_per_class") or 0
        scored = [ScoredItem(image=np.full((4, 4, 3), 0.5, np.float32), label=it.label, prompt=it.positive,
                             seed=it.seed, index=it.index, metadata=it.metadata, score=0.3,
                             accepted=not self.reject(it.index)) for it in items]
        with DatasetWriter(ds, quotas={it.label: quota for it in items} if quota else None) as w:
            w.write(scored)
        return {"status": {"status_str": "success", "completed": True, "messages": []},
                "outputs": {writer_id: {"text": [f"{ds}\nstatus"]}}}


class _Handler(http.server.BaseHTTPRequestHandler):
    fake: FakeComfy

    def log_message(self, *args):
        pass

    def _send(self, body, status=200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        f = self.fake
        path = self.path.split("?")[0]
        with f.lock:
            if path == "/system_stats":
                return self._send({"system": {"comfyui_version": "fake"}})
            if path.startswith("/object_info/"):
                name = path.rsplit("/", 1)[1]
                return self._send({name: {}} if name == SAMPLER else {})
            if path == "/queue":
                return self._send({"queue_running": [f.running] if f.running else [],
                                   "queue_pending": list(f.pending)})
            if path == "/history":
                return self._send(dict(f.history))
            if path.startswith("/history/"):
                pid = path.rsplit("/", 1)[1]
                return self._send({pid: f.history[pid]} if pid in f.history else {})
        self._send({}, 404)

    def do_POST(self):
        f = self.fake
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with f.lock:
            if self.path == "/prompt":
                node_errors = f.validate(body["prompt"])
                if node_errors:   # ComfyUI's answer when no output validates
                    return self._send({"error": {"type": "prompt_outputs_failed_validation",
                                                 "message": "Prompt outputs failed validation", "details": ""},
                                       "node_errors": node_errors}, 400)
                pid = str(uuid.uuid4())
                f.pending.append([len(f.history) + len(f.pending), pid, body["prompt"], body.get("extra_data", {}),
                                  []])
                return self._send({"prompt_id": pid, "number": 0, "node_errors": {}})
            if self.path == "/queue":
                gone = set(body.get("delete", []))
                f.pending = deque(e for e in f.pending if e[1] not in gone)
                return self._send({})
        self._send({}, 404)
