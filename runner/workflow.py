"""An API-format workflow with one DTGen Prompt Sampler and one Dataset Writer: find the nodes,
apply command-line overrides, and make the graph of one queue run (start_index, count, dataset)."""
from __future__ import annotations

import copy
import difflib
import json
import math
from pathlib import Path

SAMPLER, WRITER, FILTER, CLIP_LOADER = "DTGenPromptSampler", "DTGenDatasetWriter", "DTGenClipFilter", "DTGenClipLoader"
SAMPLER_KEYS = ("pack", "mode", "seed", "classes", "inline_yaml")
# --ckpt / --lora / --clip-weights: which loader inputs each one sets
MODEL_FLAGS = {
    "ckpt": (("CheckpointLoaderSimple", "ckpt_name"),),
    "lora": (("LoraLoader", "lora_name"), ("LoraLoaderModelOnly", "lora_name")),
    "clip_weights": ((CLIP_LOADER, "weights"),),
}


class WorkflowError(ValueError):
    """The workflow file cannot be queued as asked; the message names the file, node and input."""


def parse_value(text: str):
    """``--set`` values: JSON when they parse (numbers, true, null), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class Workflow:
    def __init__(self, graph: dict, source: str = "<workflow>"):
        if not isinstance(graph, dict) or not graph or not all(
                isinstance(n, dict) and "class_type" in n for n in graph.values()):
            raise WorkflowError(f"{source}: not an API-format workflow (export it with 'Export (API)'; "
                                "the UI format with 'nodes' and 'links' cannot be queued)")
        self.graph, self.source = graph, source
        self.sampler_id = self._one(SAMPLER)
        self.writer_id = self._one(WRITER)
        filters = self._ids(FILTER)
        self.filter_ids = filters

    @classmethod
    def load(cls, path) -> Workflow:
        path = Path(path)
        try:
            graph = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WorkflowError(f"{path}: workflow file not found") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise WorkflowError(f"{path}: not valid JSON ({e})") from None
        except OSError as e:
            raise WorkflowError(f"{path}: cannot read the workflow file ({e.strerror or e})") from None
        return cls(graph, str(path))

    def _ids(self, class_type: str) -> list[str]:
        return [k for k, n in self.graph.items() if n["class_type"] == class_type]

    def _one(self, class_type: str) -> str:
        found = self._ids(class_type)
        if len(found) != 1:
            raise WorkflowError(f"{self.source}: the queue client needs exactly one {class_type} node, "
                                f"found {len(found)}")
        return found[0]

    # -- overrides ----------------------------------------------------------------------------
    def set_input(self, node_id: str, name: str, value) -> None:
        node = self.graph.get(str(node_id))
        if node is None:
            raise WorkflowError(f"{self.source}: no node {node_id!r} (nodes: {', '.join(self.graph)})")
        if isinstance(node["inputs"].get(name), list):
            raise WorkflowError(f"{self.source}: node {node_id} input {name!r} is a link; it cannot be set")
        node["inputs"][name] = value

    def apply_set(self, assignment: str) -> None:
        """``node_id.input=value`` (node id or exact class_type, e.g. KSampler.steps=4)."""
        target, sep, value = assignment.partition("=")
        node, dot, name = target.partition(".")
        if not sep or not dot or not node or not name:
            raise WorkflowError(f"--set {assignment!r}: expected node_id.input=value, e.g. 7.steps=20")
        ids = [node] if node in self.graph else self._ids(node)
        if not ids:
            raise WorkflowError(f"--set {assignment!r}: no node with id or class_type {node!r} in {self.source}")
        value = parse_value(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise WorkflowError(f"--set {assignment!r}: {value} is not a finite number")
        if isinstance(value, list):
            raise WorkflowError(f"--set {assignment!r}: a JSON list is a link in the API format, not a value")
        for node_id in ids:
            self._check_input_name(node_id, name, assignment)
        for node_id in ids:
            self.set_input(node_id, name, value)

    def _check_input_name(self, node_id: str, name: str, assignment: str) -> None:
        """Only inputs the file has can be checked offline (ComfyUI's node definitions are on the server)."""
        node = self.graph[node_id]
        have = list(node.get("inputs") or {})
        if name in have:
            return
        near = difflib.get_close_matches(name, have, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise WorkflowError(f"--set {assignment!r}: node {node_id} ({node['class_type']}) has no input {name!r}"
                            f"{hint}; its inputs: {', '.join(have) or 'none'} (an input missing from the workflow file "
                            "cannot be checked offline: set it in the editor and export the API workflow again)")

    def set_models(self, ckpt=None, lora=None, clip_weights=None) -> None:
        for flag, value in (("ckpt", ckpt), ("lora", lora), ("clip_weights", clip_weights)):
            if value is None:
                continue
            hits = [(k, name) for class_type, name in MODEL_FLAGS[flag] for k in self._ids(class_type)]
            if not hits:
                raise WorkflowError(f"--{flag.replace('_', '-')}: {self.source} has no "
                                    f"{' or '.join(c for c, _ in MODEL_FLAGS[flag])} node")
            for node_id, name in hits:
                self.set_input(node_id, name, value)

    # -- what the client needs to know -------------------------------------------------------------
    def sampler_inputs(self) -> dict:
        inputs = self.graph[self.sampler_id]["inputs"]
        out = {}
        for key in SAMPLER_KEYS:
            value = inputs.get(key, "" if key in ("classes", "inline_yaml") else None)
            if isinstance(value, list):
                raise WorkflowError(f"{self.source}: sampler node {self.sampler_id} input {key!r} is a link; "
                                    "the queue client needs its value to plan items")
            out[key] = value
        if out["pack"] is None:
            raise WorkflowError(f"{self.source}: sampler node {self.sampler_id} has no 'pack' input")
        out["mode"] = out["mode"] or "balanced"
        try:
            out["seed"] = int(out["seed"] or 0)
        except (TypeError, ValueError):
            raise WorkflowError(f"{self.source}: sampler node {self.sampler_id} seed {out['seed']!r} "
                                "is not an integer") from None
        return out

    @property
    def dataset_name(self) -> str:
        value = self.graph[self.writer_id]["inputs"].get("dataset_name")
        if not isinstance(value, str) or not value.strip():
            raise WorkflowError(f"{self.source}: writer node {self.writer_id} needs a literal dataset_name")
        return value

    def set_dataset(self, name: str) -> None:
        """The writer's folder, the filter's history and the sampler's resume dataset are one dataset."""
        value = self.graph[self.sampler_id]["inputs"].get("dataset_name")
        sampler = [self.sampler_id] if isinstance(value, str) else []   # absent or linked: leave it
        for node_id in [self.writer_id, *self.filter_ids, *sampler]:
            self.set_input(node_id, "dataset_name", name)

    def set_writer_quota(self, per_class: int) -> None:
        self.set_input(self.writer_id, "quota_per_class", int(per_class))

    def item_graph(self, start_index: int, count: int) -> dict:
        graph = copy.deepcopy(self.graph)
        inputs = graph[self.sampler_id]["inputs"]
        inputs["start_index"], inputs["count"] = int(start_index), int(count)
        inputs["quota_per_class"] = 0   # the client plans the indices: the sampler's resume mode is off
                                        # (also when the input is absent: its default turns it on)
        return graph
