"""An API-format workflow the queue client can drive: find the nodes, apply command-line overrides,
and make the graph of one queue run (start_index, count, dataset).

Sources of images: a DTGen Prompt Sampler (SD images, source ``generated``) and/or a DTGen
Copy-Paste node (source ``copy_paste``). Each feeds its own DTGen Dataset Writer: the *main* writer
is the one downstream of the sampler (through the filter), a writer downstream of the copy-paste
node is its *copy-paste branch*. A graph with only a copy-paste node is queueable too."""
from __future__ import annotations

import copy
import difflib
import json
import math
from pathlib import Path

from ..nodes.common.files import read_regular

MAX_WORKFLOW_BYTES = 16 * 1024 ** 2   # an API workflow is kilobytes; a bigger file is not one
SAMPLER, WRITER, FILTER, CLIP_LOADER = "DTGenPromptSampler", "DTGenDatasetWriter", "DTGenClipFilter", "DTGenClipLoader"
COPY_PASTE = "DTGenCopyPaste"
SAMPLER_KEYS = ("pack", "mode", "seed", "classes", "inline_yaml")
# --ckpt / --lora / --clip-weights: which loader inputs each one sets
MODEL_FLAGS = {
    "ckpt": (("CheckpointLoaderSimple", "ckpt_name"), ("DTGenTrainCheckpointLoader", "ckpt_name")),
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
        for node in graph.values():
            node.setdefault("inputs", {})
        self.graph, self.source = graph, source
        self.sampler_id = self._at_most_one(SAMPLER)
        self.copy_paste_id = self._at_most_one(COPY_PASTE)
        if self.sampler_id is None and self.copy_paste_id is None:
            raise WorkflowError(f"{source}: the queue client needs a {SAMPLER} or a {COPY_PASTE} node, found neither")
        main, branches = [], []
        for writer in self._ids(WRITER):
            above = self.ancestors([writer])
            from_sampler = self.sampler_id in above
            from_copy_paste = self.copy_paste_id is not None and self.copy_paste_id in above
            if from_sampler and from_copy_paste:
                raise WorkflowError(f"{source}: writer node {writer} is fed by both the prompt sampler and the "
                                    "copy-paste node; give each source a writer of its own")
            if from_sampler:
                main.append(writer)
            elif from_copy_paste:
                branches.append(writer)
            else:
                raise WorkflowError(f"{source}: writer node {writer} is fed by neither a {SAMPLER} nor a "
                                    f"{COPY_PASTE}; the queue client cannot plan its items")
        if self.sampler_id is not None and len(main) != 1:
            raise WorkflowError(f"{source}: the queue client needs exactly one {WRITER} node downstream of the "
                                f"{SAMPLER} (node {self.sampler_id}), found {len(main)}")
        if self.copy_paste_id is not None and not branches:
            raise WorkflowError(f"{source}: the {COPY_PASTE} node {self.copy_paste_id} feeds no {WRITER}; "
                                "wire its image, label and masks to a writer of its own")
        self.copy_paste_writer_ids = branches
        self.writer_id = main[0] if main else branches[0]      # where the dataset path is read first
        self.writer_ids = main + branches
        self.filter_ids = self._ids(FILTER)

    @classmethod
    def load(cls, path) -> Workflow:
        path = Path(path)
        try:
            text = read_regular(path, MAX_WORKFLOW_BYTES, follow_symlinks=True).decode("utf-8")
            graph = json.loads(text)
        except FileNotFoundError:
            raise WorkflowError(f"{path}: workflow file not found") from None
        except RecursionError:
            raise WorkflowError(f"{path}: not a workflow: its JSON is nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise WorkflowError(f"{path}: not valid JSON ({str(e)[:200]})") from None
        except OSError as e:
            raise WorkflowError(f"{path}: cannot read the workflow file ({e.strerror or e})") from None
        return cls(graph, str(path))

    def _ids(self, class_type: str) -> list[str]:
        return [k for k, n in self.graph.items() if n["class_type"] == class_type]

    def _at_most_one(self, class_type: str) -> str | None:
        found = self._ids(class_type)
        if len(found) > 1:
            raise WorkflowError(f"{self.source}: the queue client drives at most one {class_type} node, found "
                                f"{len(found)} ({', '.join(found)})")
        return found[0] if found else None

    def ancestors(self, node_ids, graph: dict | None = None) -> set[str]:
        """The nodes given and every node they read from (links ``[node_id, output]``)."""
        graph = self.graph if graph is None else graph
        seen: set[str] = set()
        todo = [str(n) for n in node_ids]
        while todo:
            node_id = todo.pop()
            if node_id in seen or node_id not in graph:
                continue
            seen.add(node_id)
            for value in graph[node_id]["inputs"].values():
                if _is_link(value):
                    todo.append(str(value[0]))
        return seen

    @property
    def has_sampler(self) -> bool:
        return self.sampler_id is not None

    @property
    def has_copy_paste(self) -> bool:
        return self.copy_paste_id is not None

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
        if self.sampler_id is None:
            raise WorkflowError(f"{self.source}: no {SAMPLER} node")
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

    def copy_paste_inputs(self) -> dict:
        """The copy-paste node's literal ``count``, ``quota_per_class``, ``start_index`` and ``classes``."""
        if self.copy_paste_id is None:
            raise WorkflowError(f"{self.source}: no {COPY_PASTE} node")
        inputs = self.graph[self.copy_paste_id]["inputs"]
        out = {}
        for key, default in (("count", 8), ("quota_per_class", 1000), ("start_index", 0), ("classes", "")):
            value = inputs.get(key, default)
            if isinstance(value, list):
                raise WorkflowError(f"{self.source}: copy-paste node {self.copy_paste_id} input {key!r} is a link; "
                                    "the queue client needs its value")
            if key != "classes":
                try:
                    value = int(value if value is not None else default)
                except (TypeError, ValueError):
                    raise WorkflowError(f"{self.source}: copy-paste node {self.copy_paste_id} {key} {value!r} "
                                        "is not an integer") from None
            out[key] = value
        out["classes"] = tuple(c.strip() for c in str(out["classes"] or "").split(",") if c.strip())
        return out

    @property
    def dataset_name(self) -> str:
        names = {}
        for writer in self.writer_ids:
            value = self.graph[writer]["inputs"].get("dataset_name")
            if not isinstance(value, str) or not value.strip():
                raise WorkflowError(f"{self.source}: writer node {writer} needs a literal dataset_name")
            names.setdefault(value, writer)
        if len(names) > 1:
            shown = ", ".join(f"node {w}: {n!r}" for n, w in names.items())
            raise WorkflowError(f"{self.source}: the writers name different datasets ({shown}); pass --dataset "
                                "to write them all to one")
        return next(iter(names))

    def set_dataset(self, name: str) -> None:
        """The writers' folder, the filters' history and the resume dataset of the sampler and the
        copy-paste node are one dataset."""
        nodes = [*self.writer_ids, *self.filter_ids]
        if self.sampler_id is not None and isinstance(self.graph[self.sampler_id]["inputs"].get("dataset_name"), str):
            nodes.append(self.sampler_id)          # absent or linked: leave it (the client plans its items)
        if self.copy_paste_id is not None and not _is_link(self.graph[self.copy_paste_id]["inputs"].get("dataset_name")):
            nodes.append(self.copy_paste_id)       # its resume mode counts this dataset
        for node_id in nodes:
            self.set_input(node_id, "dataset_name", name)

    def set_writer_quota(self, per_class: int) -> None:
        self.set_input(self.writer_id, "quota_per_class", int(per_class))

    def set_copy_paste_quota(self, per_class: int) -> None:
        """The copy-paste node's resume mode: it emits the items the dataset lacks, up to ``per_class``
        copy-paste images per class (0: resume mode off)."""
        self.set_input(self.copy_paste_id, "quota_per_class", int(per_class))

    def item_graph(self, start_index: int, count: int, copy_paste: bool | None = None,
                   writer_quota: int | None = None) -> dict:
        """The graph of one queue run of the sampler: items ``start_index .. +count-1``. With
        ``copy_paste=False`` the copy-paste branch is left out (default: kept when there is one)."""
        if copy_paste is None:
            copy_paste = self.has_copy_paste
        graph = copy.deepcopy(self.graph)
        if self.has_copy_paste and not copy_paste:
            graph = self._without_copy_paste(graph)
        inputs = graph[self.sampler_id]["inputs"]
        inputs["start_index"], inputs["count"] = int(start_index), int(count)
        inputs["quota_per_class"] = 0   # the client plans the indices: the sampler's resume mode is off
                                        # (also when the input is absent: its default turns it on)
        self._writer_quotas(graph, writer_quota)
        return graph

    def copy_paste_graph(self, writer_quota: int | None = None) -> dict:
        """The copy-paste branch alone (the ancestors of its writers), the node in resume mode: the
        graph queued when the sampler has its quota, or when there is no sampler."""
        keep = self.ancestors(self.copy_paste_writer_ids)
        graph = {k: copy.deepcopy(n) for k, n in self.graph.items() if k in keep}
        self._writer_quotas(graph, writer_quota)
        return graph

    def _without_copy_paste(self, graph: dict) -> dict:
        """Everything but the copy-paste branch: its nodes that the main writer does not need, and
        whatever reads from them (previews)."""
        drop = self.ancestors(self.copy_paste_writer_ids) - self.ancestors([self.writer_id])
        changed = True
        while changed:
            changed = False
            for k, node in graph.items():
                if k not in drop and any(_is_link(v) and str(v[0]) in drop for v in node["inputs"].values()):
                    drop.add(k)
                    changed = True
        return {k: n for k, n in graph.items() if k not in drop}

    def _writer_quotas(self, graph: dict, writer_quota: int | None) -> None:
        if writer_quota is None:
            return
        for writer in self.writer_ids:
            if writer in graph:
                graph[writer]["inputs"]["quota_per_class"] = int(writer_quota)


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) \
        and isinstance(value[1], int)
