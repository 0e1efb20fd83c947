"""The import rule (docs/architecture.md): layers import downward only.

    common  <-  prompting, scoring, store, fewshot, training  <-  curation, synthesis  <-  evaluation  <-  adapters  <-  extension.py

- ``common`` imports nothing of ours outside ``common``;
- a plain stage never imports a stage of the same rank (sideways) or above (upward);
- only ``nodes/adapters/`` and ``nodes/extension.py`` import ComfyUI (and the demo's model builder,
  which runs in a subprocess with ComfyUI on its path);
- ``runner/`` (the command line and HTTP client) uses plain stages, never the adapters;
- no import cycle anywhere in ``nodes/`` or ``runner/``, inside a stage too, counting the imports
  made inside functions (a lazy import hides a cycle from Python, not from a reader).
"""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

from support.pkg import ROOT

RANK = {"common": 0, "prompting": 1, "scoring": 1, "store": 1, "fewshot": 1, "training": 1, "curation": 2, "synthesis": 2, "evaluation": 3,
        "adapters": 4, "extension": 5}
COMFY = {"comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "server", "execution",
         "node_helpers", "latent_preview"}
COMFY_SUBPROCESS_SCRIPTS = {"runner/demo_models.py"}


def _imports(path: Path, root: Path) -> list[tuple[str, int]]:
    """(absolute dotted module, line) of every import in ``path``, relative ones resolved."""
    package = list(path.relative_to(root).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                # ``from . import a, b``: the names are modules of that package
                out += [(f"{module}.{a.name}" if not node.module else module, node.lineno) for a in node.names]
            else:
                out.append((node.module, node.lineno))
    return out


def _stage(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "nodes" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in RANK else None


def violations(root: Path) -> list[str]:
    """Every import that breaks the rule, as ``file:line: message``."""
    found = []
    for path in sorted((root / "nodes").rglob("*.py")) + sorted((root / "runner").rglob("*.py")):
        rel = str(path.relative_to(root))
        own = _stage(".".join(path.relative_to(root).with_suffix("").parts))
        for module, line in _imports(path, root):
            where = f"{rel}:{line}"
            if module.split(".")[0] in COMFY:
                if own not in ("adapters", "extension") and rel not in COMFY_SUBPROCESS_SCRIPTS:
                    found.append(f"{where}: plain module imports ComfyUI ({module})")
                continue
            target = _stage(module)
            if target is None or target == own:
                continue
            if rel.startswith("runner/"):
                if target in ("adapters", "extension"):
                    found.append(f"{where}: runner imports the ComfyUI layer ({module})")
            elif own is None:
                continue
            elif own == "common":
                found.append(f"{where}: common imports {target} (common imports nothing of ours)")
            elif RANK[target] > RANK[own]:
                found.append(f"{where}: {own} imports {target}, a stage above it")
            elif RANK[target] == RANK[own]:
                found.append(f"{where}: {own} imports {target}, a stage beside it")
    return found


def _copy_tree(dest: Path) -> None:
    """nodes/ and runner/ copied into ``dest``: where a test plants the violation its check must catch."""
    for folder in ("nodes", "runner"):
        shutil.copytree(ROOT / folder, dest / folder)


def test_layers_import_downward_only():
    assert violations(ROOT) == []


def test_the_check_catches_upward_sideways_and_comfyui_imports(tmp_path):
    """The rule test is not vacuous: plant one violation of each kind in a copy of the tree."""
    _copy_tree(tmp_path)
    plants = {
        "nodes/store/writer.py": "from ..curation import quotas  # upward\n",
        "nodes/prompting/pack.py": "from ..store import paths  # sideways\n",
        "nodes/common/lists.py": "from ..prompting import pack  # common imports ours\n",
        "nodes/curation/decide.py": "import folder_paths  # ComfyUI in a plain module\n",
        "runner/workflow.py": "from ..nodes.adapters import dataset  # runner uses an adapter\n",
    }
    for rel, line in plants.items():
        path = tmp_path / rel
        path.write_text(path.read_text() + line)
    found = violations(tmp_path)
    assert len(found) == len(plants), found
    for rel in plants:
        assert any(f.startswith(rel + ":") for f in found), (rel, found)


def _module_file(module: str, root: Path) -> Path | None:
    """The file of ``nodes.x.y`` / ``runner.x`` in ``root`` (a module or a package), else None."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of ours it imports (at the top or inside functions), files that exist."""
    graph = {}
    for path in sorted((root / "nodes").rglob("*.py")) + sorted((root / "runner").rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        name = name[: -len(".__init__")] if name.endswith(".__init__") else name
        targets = set()
        for module, _ in _imports(path, root):
            if module and module.split(".")[0] in ("nodes", "runner"):
                found = _module_file(module, root)
                if found is None and "." in module:   # ``from .x import name``: the module is x
                    found = _module_file(module.rsplit(".", 1)[0], root)
                if found is not None and found != path and found.name != "__init__.py":
                    targets.add(".".join(found.relative_to(root).with_suffix("").parts))
        graph[name] = targets
    return graph


def cycles(root: Path) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    graph, index, low, stack, on, out = import_graph(root), {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_even_inside_a_stage():
    assert cycles(ROOT) == []


def test_the_cycle_check_catches_a_cycle_inside_one_stage(tmp_path):
    _copy_tree(tmp_path)
    path = tmp_path / "nodes" / "store" / "manifest.py"
    path.write_text(path.read_text() + "\n\ndef _late():\n    from .writer import DatasetWriter  # a lazy import closing a cycle\n")
    found = cycles(tmp_path)
    assert any({"nodes.store.manifest", "nodes.store.writer"} <= set(group) for group in found), found


def private_reaches(root: Path) -> list[str]:
    """``obj._name`` in a module that does not define ``_name`` itself: a private member reached
    across modules (``self``/``cls`` and dunders are fine; so is a module's own class or object)."""
    found = []
    for path in sorted((root / "nodes").rglob("*.py")) + sorted((root / "runner").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        own = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.arg):
                own.add(node.arg)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                    and node.attr not in own):
                found.append(f"{path.relative_to(root)}:{node.lineno}: .{node.attr}")
    return found


ALLOWED_PRIVATE = {
    "._exit",         # os._exit: leave at once in a forked child (the standard library's own name)
}


def test_no_private_member_is_reached_across_modules():
    found = [f for f in private_reaches(ROOT) if not any(f.endswith(a) for a in ALLOWED_PRIVATE)]
    assert found == []


def test_the_private_check_catches_one(tmp_path):
    _copy_tree(tmp_path)
    path = tmp_path / "nodes" / "store" / "ingest.py"
    path.write_text(path.read_text() + "\n\ndef _peek(writer):\n    return writer._ids\n")
    assert any(f.startswith("nodes/store/ingest.py:") and f.endswith("._ids") for f in private_reaches(tmp_path))
