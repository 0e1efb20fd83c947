"""Where the time of a ComfyUI run goes, read from the server itself (shared by the benches).

* ``timed_prompts``: queue graphs with our own client id, keep ``pending`` queued, and time every
  node from the websocket ``executing`` events (a node's time = from its event to the next one).
  The last node of a prompt ends at the prompt's ``execution_success`` timestamp in ``/history``,
  not at the ``node: null`` event: ComfyUI sends that event and then, every 10 s, runs a full
  ``gc.collect()`` in the same thread (main.py), which delays the event's delivery by the
  collection's 0.3-0.6 s and would be billed to whichever node ran last. Cached nodes take no time
  and do not appear.
* ``history_windows`` / ``idle_gaps``: each prompt's execution window from the ms timestamps
  ComfyUI puts on ``execution_start`` / ``execution_success`` in ``/history``, and the gaps
  between consecutive prompts: the time the server (and its GPU) had nothing to run, whoever
  queued the prompts (our queue client included).
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from statistics import mean, median


@dataclass
class PromptTiming:
    prompt_id: str
    nodes: dict[str, float] = field(default_factory=dict)  # class_type -> seconds in this prompt
    wall: float = 0.0                                       # execution_start -> execution_success
    events: list = field(default_factory=list)              # (node id or None, time.time() received)


def timed_prompts(url: str, graphs, pending: int = 2, timeout: float = 900.0) -> list[PromptTiming]:
    """Run every graph of ``graphs`` (a list of API graphs) and time its nodes."""
    import websocket  # websocket-client

    from dtgen.runner.api import ComfyAPI

    api, cid = ComfyAPI(url, timeout=120), str(uuid.uuid4())
    ws = websocket.create_connection(url.replace("http", "ws", 1) + f"/ws?clientId={cid}", timeout=timeout)
    kinds: dict[str, dict[str, str]] = {}
    out: list[PromptTiming] = []
    by_id: dict[str, PromptTiming] = {}
    queued = 0
    try:
        while queued < min(pending, len(graphs)):
            pid = api.queue_prompt(graphs[queued], cid)
            kinds[pid] = {k: v["class_type"] for k, v in graphs[queued].items()}
            queued += 1
        while len(out) < len(graphs):
            msg = ws.recv()
            now = time.time()
            if not isinstance(msg, str):
                continue
            event = json.loads(msg)
            kind, data = event.get("type"), event.get("data") or {}
            if kind == "execution_error":
                raise RuntimeError(f"prompt failed in {data.get('node_type')}: {data.get('exception_message')}")
            if kind != "executing" or data.get("prompt_id") not in kinds:
                continue
            pid = data["prompt_id"]
            timing = by_id.setdefault(pid, PromptTiming(pid))
            timing.events.append((data.get("node"), now))
            if data.get("node") is None:
                out.append(timing)
                if queued < len(graphs):
                    nid = api.queue_prompt(graphs[queued], cid)
                    kinds[nid] = {k: v["class_type"] for k, v in graphs[queued].items()}
                    queued += 1
    finally:
        ws.close()
    for timing in out:
        _settle(timing, kinds[timing.prompt_id], api.history(timing.prompt_id) or {})
    return out


def _settle(timing: PromptTiming, kinds: dict[str, str], entry: dict) -> None:
    """Node times from the received events; the last node ends at the server's success timestamp."""
    stamps = {ev: data.get("timestamp") for ev, data in (entry.get("status") or {}).get("messages") or []}
    events = list(timing.events)
    if stamps.get("execution_success") and len(events) >= 2:
        events[-1] = (None, min(events[-1][1], stamps["execution_success"] / 1000))
    for (node, t), (_, t_next) in zip(events, events[1:]):
        name = kinds[node]
        timing.nodes[name] = timing.nodes.get(name, 0.0) + max(0.0, t_next - t)
    if stamps.get("execution_start") and stamps.get("execution_success"):
        timing.wall = (stamps["execution_success"] - stamps["execution_start"]) / 1000
    elif events:
        timing.wall = events[-1][1] - events[0][1]


def history_windows(url: str) -> list[tuple[float, float, str]]:
    """(start s, end s, prompt id) of every finished prompt in the server's history, by start."""
    from dtgen.runner.api import ComfyAPI

    hist = ComfyAPI(url, timeout=60).get("/history?max_items=100000") or {}
    windows = []
    for pid, entry in hist.items():
        stamps = {ev: data.get("timestamp") for ev, data in (entry.get("status") or {}).get("messages") or []}
        if stamps.get("execution_start") and stamps.get("execution_success"):
            windows.append((stamps["execution_start"] / 1000, stamps["execution_success"] / 1000, pid))
    return sorted(windows)


def clear_history(url: str) -> None:
    from dtgen.runner.api import ComfyAPI

    ComfyAPI(url, timeout=60)._request("/history", {"clear": True})


def idle_gaps(windows) -> dict:
    """Gaps between one prompt's end and the next one's start (ms timestamps: 1 ms resolution)."""
    gaps = [max(0.0, b[0] - a[1]) for a, b in zip(windows, windows[1:])]
    busy = sum(end - start for start, end, _ in windows)
    span = (windows[-1][1] - windows[0][0]) if windows else 0.0
    return {"prompts": len(windows), "gaps_s": gaps,
            "mean_gap_ms": 1000 * mean(gaps) if gaps else 0.0,
            "median_gap_ms": 1000 * median(gaps) if gaps else 0.0,
            "max_gap_ms": 1000 * max(gaps) if gaps else 0.0,
            "idle_fraction": (1 - busy / span) if span > 0 else 0.0,
            "mean_prompt_s": busy / len(windows) if windows else 0.0}


def node_split(timings: list[PromptTiming]) -> dict[str, float]:
    """Mean seconds per prompt of each node class, over ``timings``."""
    names = sorted({k for t in timings for k in t.nodes})
    return {k: sum(t.nodes.get(k, 0.0) for t in timings) / len(timings) for k in names} if timings else {}
