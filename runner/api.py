"""ComfyUI's HTTP API, stdlib only (and the pack's ``errors.clip``): queue a graph, read the queue and
the history, explain refusals.

Every failure is an exception whose message is one line a user can act on.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

from ..nodes.common.errors import clip

# Loader inputs that name a model file -> the models/ folder ComfyUI looks in.
MODEL_INPUTS = {
    "ckpt_name": "checkpoints", "lora_name": "loras", "vae_name": "vae", "unet_name": "diffusion_models",
    "clip_name": "text_encoders", "clip_name1": "text_encoders", "clip_name2": "text_encoders",
    "clip_name3": "text_encoders", "control_net_name": "controlnet", "weights": "open_clip",
}


class ComfyError(RuntimeError):
    """A problem talking to one server; the message is one line saying what to do."""


class ServerUnreachable(ComfyError):
    pass


class GraphRejected(ComfyError):
    """POST /prompt refused the graph; ``answer`` is ComfyUI's reply (error + node_errors)."""

    def __init__(self, url: str, answer: dict):
        self.answer = answer
        why = clip(describe_rejection(answer), 1000)   # a value echoed back can be megabytes
        if answer.get("prompt_id"):   # ComfyUI queued the outputs it accepted: they run
            super().__init__(f"{url} queued the workflow as prompt {answer['prompt_id']} but left out the outputs "
                             f"of the nodes it refused (the rest runs): {why}")
        else:
            super().__init__(f"{url} rejected the workflow: {why}")


def describe_rejection(answer: dict) -> str:
    """ComfyUI's {error, node_errors} as readable text: per node, each distinct problem once with the
    inputs it names (custom validation repeats one message per input); missing model files are named
    with their folder."""
    error = answer.get("error") or {}
    if isinstance(error, str):
        error = {"message": error}
    lines: list[str] = []
    for node_id, info in sorted((answer.get("node_errors") or {}).items(), key=lambda kv: str(kv[0])):
        where = f"node {node_id} ({info.get('class_type', '?')})"
        inputs: dict[str, list[str]] = {}   # problem -> the inputs it was reported for, in order
        for err in info.get("errors", []):
            text, name = _one_error(err)
            names = inputs.setdefault(text, [])
            if name and name not in names:
                names.append(name)
        for text, names in inputs.items():
            on = f" input{'s' if len(names) > 1 else ''} {', '.join(names)}" if names else ""
            lines.append(f"{where}{on}: {text}")
    if not lines:
        detail = " ".join(str(error.get("details") or "").split())
        lines.append((error.get("message") or "unknown error") + (f": {detail}" if detail else ""))
    return "; ".join(lines)


def _one_error(err: dict) -> tuple[str, str | None]:
    """(message and details without the input name ComfyUI puts in front, that input name)."""
    extra = err.get("extra_info") or {}
    name = extra.get("input_name")
    if err.get("type") == "value_not_in_list" and name in MODEL_INPUTS:
        value = extra.get("received_value")
        options = (extra.get("input_config") or [[]])[0]
        have = ", ".join(map(str, options[:8])) if isinstance(options, list) and options else "none"
        return (f"model file {value!r} ({name}) is not in ComfyUI's models/{MODEL_INPUTS[name]} folder "
                f"(found: {have}); put it there or swap the name with --set/--ckpt/--lora/--clip-weights"), None
    message = str(err.get("message") or err.get("type") or "error")
    details = " ".join(str(err.get("details") or "").split())   # one line
    if name:   # ComfyUI's details: "steps", "name - why", "name: 'x' not in [...]", "name, value, exception"
        details = "" if details == name else details
        for sep in (" - ", ": ", ", "):
            if details.startswith(name + sep):
                details = details[len(name + sep):]
                break
    return (f"{message}: {details}" if details and details != message else message), name


class ComfyAPI:
    """One ComfyUI server at ``url``."""

    def __init__(self, url: str, timeout: float = 30.0):
        url = url.strip().rstrip("/")
        self.url = url if "://" in url else "http://" + url
        self.timeout = timeout

    def _request(self, path: str, payload: dict | None = None):
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                body = r.read()
                return r.status, (json.loads(body) if body.strip() else {})
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body) if body.strip() else {}
            except ValueError:
                return e.code, {"error": {"message": f"HTTP {e.code}", "details": body[:300].decode(errors="replace")}}
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServerUnreachable(f"cannot reach ComfyUI at {self.url} ({reason}); start it (e.g. "
                                    f"`comfy launch`) or pass the right --server URL") from None
        except ValueError:
            raise ComfyError(f"{self.url}{path} did not answer JSON: is this a ComfyUI server?") from None

    def get(self, path: str):
        status, body = self._request(path)
        if status != 200:
            raise ComfyError(f"{self.url}{path} answered HTTP {status}: is this a ComfyUI server?")
        return body

    def system_stats(self) -> dict:
        stats = self.get("/system_stats")
        if not isinstance(stats, dict) or "system" not in stats:
            raise ComfyError(f"{self.url} answers HTTP but is not ComfyUI (no /system_stats)")
        return stats

    def has_node(self, class_type: str) -> bool:
        return class_type in self.get(f"/object_info/{class_type}")

    def queue_prompt(self, graph: dict, client_id: str, extra: dict | None = None) -> str:
        payload = {"prompt": graph, "client_id": client_id, "extra_data": dict(extra or {})}
        status, body = self._request("/prompt", payload)
        if status == 200 and "prompt_id" in body and not body.get("node_errors"):
            return body["prompt_id"]
        raise GraphRejected(self.url, body)

    def queue(self) -> tuple[list, list]:
        """(running, waiting) entries: [number, prompt_id, prompt, extra_data, outputs]."""
        body = self.get("/queue")
        return body.get("queue_running", []), body.get("queue_pending", [])

    def history(self, prompt_id: str) -> dict | None:
        return self.get(f"/history/{prompt_id}").get(prompt_id)

    def delete_waiting(self, prompt_ids: list[str]) -> None:
        self._request("/queue", {"delete": list(prompt_ids)})


def execution_error(entry: dict) -> str | None:
    """The error message of a finished history entry, or None when it succeeded."""
    status = entry.get("status") or {}
    if status.get("status_str") != "error":
        return None
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}): "
                    f"{data.get('exception_type', 'error')}: {str(data.get('exception_message', '')).strip()}")
        if kind == "execution_interrupted":
            return "interrupted"
    return "failed"


def writer_dataset_path(entry: dict, writer_id: str) -> str | None:
    """The dataset path the writer node reported (first line of its text output)."""
    texts = ((entry.get("outputs") or {}).get(str(writer_id)) or {}).get("text") or []
    return texts[0].split("\n", 1)[0] if texts else None
