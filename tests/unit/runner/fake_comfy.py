"""A stand-in for ComfyUI's HTTP API (the few routes the queue client uses), for fast scheduler tests.

It runs a queued DTGen graph the way the real nodes do where it matters to the client: the
prompt sampler's items from the same pack, stored by the real ``DatasetWriter`` under
``output_dir/<dataset_name>`` (accepted unless ``reject(index)``), the writer's quota_per_class
applied, the dataset path reported as the writer's text output. ``fail_once`` indices error on
their first run; ``validate(graph)`` returns ComfyUI's ``node_errors`` for a graph it refuses at
POST /prompt (empty: accepted); ``stop()`` makes the server vanish like a killed process,
``restart()`` brings it back on the same port with an empty queue and history, as a restarted
ComfyUI (the prompt it was running is lost).

A ``DTGenCopyPaste`` node is run like the real one in resume mode (dataset_name and
quota_per_class set): it claims the next missing items with the real ``claims`` module (counting
copy-paste images only; each fake server is its own claim owner), stores them through the writer
it feeds, and reports ``{"made": 0, "done": true}`` (as the real node's ``dtgen_copy_paste`` output)
when every class has its quota. Its classes
are the node's ``classes`` or ``cutout_classes``; class of item i: ``classes[i % n]``;
``reject_cp(i)`` rejects copy-paste item i. ``graphs`` holds the node ids of every queued prompt.
"""
from __future__ import annotations

import http.server
import json
import os
import threading
import time
import uuid
from collections import deque
from pathlib import Path

import numpy as np
from dtgen.nodes.common.identity import StreamKey
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.curation import claims
from dtgen.nodes.store.writer import DatasetWriter
from dtgen.runner.packs import local_sampler
from dtgen.runner.workflow import COPY_PASTE, SAMPLER, WRITER

CUTOUT_CLASSES = ("plate_clean", "plate_heavily_dirty")   # the fake cutout set's classes
_CLAIMS = threading.Lock()    # claims' owner is per process: each fake server sets its own while it plans


class FakeComfy:
    def __init__(self, output_dir: Path, reject=lambda i: False, fail_once=(), delay: float = 0.02,
                 validate=lambda graph: {}, reject_cp=lambda i: False, cutout_classes=CUTOUT_CLASSES):
        self.output_dir, self.reject, self.delay, self.validate = Path(output_dir), reject, delay, validate
        self.reject_cp, self.cutout_classes = reject_cp, tuple(cutout_classes)
        self.fail_once = set(fail_once)
        self.executed_cp: list[int] = []        # copy-paste item indices made, in order
        self.graphs: list[set] = []             # node ids of every queued prompt, in order
        self.owner = f"{claims._HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.pending: deque = deque()
        self.running = None
        self.history: dict[str, dict] = {}
        self.executed: list[int] = []           # item indices run, in order (repeats visible)
        self.lock = threading.Lock()
        self.alive = True
        self.generation = 0                     # +1 per restart: what the old process ran is lost
        self._serve(0)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self._work, daemon=True).start()

    def _serve(self, port: int) -> None:
        handler = type("H", (_Handler,), {"fake": self})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def restart(self, down: float = 0.5, until=None) -> None:
        """Away for ``down`` seconds, and then until ``until()`` is true (if given)."""
        port = self.httpd.server_port
        self.httpd.shutdown()
        self.httpd.server_close()
        with self.lock:
            self.generation += 1
            self.pending.clear()
            self.history.clear()
            self.running = None
        time.sleep(down)
        while until is not None and not until():
            time.sleep(0.05)
        self._serve(port)

    def stop(self) -> None:
        self.alive = False
        self.httpd.shutdown()
        self.httpd.server_close()

    def _work(self) -> None:
        while self.alive:
            with self.lock:
                entry = self.pending.popleft() if self.pending else None
                self.running = entry
                generation = self.generation
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
                if generation != self.generation:
                    continue              # it ran in the process that was "killed": no history of it
                self.history[entry[1]] = {"prompt": entry, **result}
                self.running = None

    def _execute(self, graph: dict) -> dict:
        outputs: dict = {}
        sampler_id = next((k for k, n in graph.items() if n["class_type"] == SAMPLER), None)
        cp_id = next((k for k, n in graph.items() if n["class_type"] == COPY_PASTE), None)
        if sampler_id is not None:
            failed = self._sampler_branch(graph, sampler_id, outputs)
            if failed is not None:
                return failed
        if cp_id is not None:
            self._copy_paste_branch(graph, cp_id, outputs)
        return {"status": {"status_str": "success", "completed": True, "messages": []}, "outputs": outputs}

    def _sampler_branch(self, graph: dict, sampler_id: str, outputs: dict) -> dict | None:
        writer_id, writer = _writer_of(graph, sampler_id)
        inputs = graph[sampler_id]["inputs"]
        items = local_sampler(inputs).items(inputs["start_index"], inputs["count"])
        for it in items:
            if it.index in self.fail_once:
                self.fail_once.discard(it.index)
                return {"status": {"status_str": "error", "completed": False, "messages": [
                    ["execution_error", {"node_id": "7", "node_type": "KSampler", "exception_type": "RuntimeError",
                                         "exception_message": f"boom at {it.index}"}]]}, "outputs": {}}
        self.executed.extend(it.index for it in items)
        scored = [ScoredItem(image=np.full((4, 4, 3), 0.5, np.float32), label=it.label, prompt=it.positive,
                             seed=it.seed, index=it.index, metadata=it.metadata, score=0.3,
                             accepted=not self.reject(it.index)) for it in items]
        outputs[writer_id] = {"text": [self._write(writer, scored)]}
        return None

    def _copy_paste_branch(self, graph: dict, cp_id: str, outputs: dict) -> None:
        inputs = graph[cp_id]["inputs"]
        labels = tuple(c.strip() for c in (inputs.get("classes") or "").split(",") if c.strip()) or self.cutout_classes
        seed, name, quota = int(inputs.get("seed") or 0), inputs.get("dataset_name") or "", inputs.get("quota_per_class") or 0
        stream = f"fakecp{seed}-{'-'.join(labels)}"

        def label_of(i):
            return labels[i % len(labels)]

        if name and quota:
            with _CLAIMS:
                mine, claims._OWNER = claims._OWNER, self.owner
                try:
                    picked = claims.claim_missing_indices(
                        self.output_dir / name, label_of, inputs["start_index"], inputs["count"],
                        targets={label: quota for label in labels}, stream_key=StreamKey(stream, seed, "copy_paste"),
                        pack_hash=None, source="copy_paste")
                finally:
                    claims._OWNER = mine
            if not picked:
                outputs[cp_id] = {"text": [f"every class of {name} has {quota} copy-paste images: done"],
                                  "dtgen_copy_paste": [{"made": 0, "done": True}]}
                return
        else:
            picked = list(range(inputs["start_index"], inputs["start_index"] + inputs["count"]))
        self.executed_cp.extend(picked)
        scored = [ScoredItem(image=np.full((4, 4, 3), 0.25, np.float32), label=label_of(i),
                             prompt=f"a photo of {label_of(i)}", seed=i, index=i, score=None,
                             accepted=not self.reject_cp(i),
                             metadata={"source": "copy_paste", "stream": stream, "index": i,
                                       "item_id": f"copy_paste:{stream}:{i}"}) for i in picked]
        outputs[cp_id] = {"text": [f"{len(picked)} copy-paste item(s): {len(picked)} object(s) placed"],
                          "dtgen_copy_paste": [{"made": len(picked), "done": False}]}
        writer_id, writer = _writer_of(graph, cp_id)
        outputs[writer_id] = {"text": [self._write(writer, scored)]}

    def _write(self, writer: dict, scored: list) -> str:
        ds = self.output_dir / writer["inputs"]["dataset_name"]
        quota = writer["inputs"].get("quota_per_class") or 0
        with DatasetWriter(ds, quotas={it.label: quota for it in scored} if quota else None) as w:
            w.write(scored)
        return f"{ds}\nstatus"


def _writer_of(graph: dict, source_id: str) -> tuple[str, dict]:
    """The writer downstream of node ``source_id``."""
    def above(node_id, seen):
        if node_id in seen or node_id not in graph:
            return seen
        seen.add(node_id)
        for value in graph[node_id]["inputs"].values():
            if isinstance(value, list) and len(value) == 2:
                above(str(value[0]), seen)
        return seen

    return next((k, n) for k, n in graph.items() if n["class_type"] == WRITER and source_id in above(k, set()))


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
                return self._send({name: {}} if name in (SAMPLER, COPY_PASTE) else {})
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
                f.graphs.append(set(body["prompt"]))
                f.pending.append([len(f.history) + len(f.pending), pid, body["prompt"], body.get("extra_data", {}),
                                  []])
                return self._send({"prompt_id": pid, "number": 0, "node_errors": {}})
            if self.path == "/queue":
                gone = set(body.get("delete", []))
                f.pending = deque(e for e in f.pending if e[1] not in gone)
                return self._send({})
        self._send({}, 404)
