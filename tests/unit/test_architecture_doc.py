"""docs/architecture.md is true to the code: every node id, display name, adapter, socket type,
stage and module it names exists, and nothing the code has is missing from it."""
from __future__ import annotations

import ast
import re

from support.pkg import ROOT

DOC = (ROOT / "docs" / "architecture.md").read_text()
NODES = ROOT / "nodes"


def _schemas() -> dict[str, tuple[str, str]]:
    """node id -> (display name, adapter module) from every ``io.Schema(node_id=node_id("X"), ...)``."""
    out = {}
    for path in sorted((NODES / "adapters").glob("*.py")):
        for call in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "Schema"):
                continue
            kw = {k.arg: k.value for k in call.keywords}
            ident = kw["node_id"].args[0].value
            out[f"DTGen{ident}"] = (kw["display_name"].value, path.stem)
    return out


def _table(heading: str) -> list[list[str]]:
    section = DOC.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    return [[c.strip().strip("`") for c in row.strip("|").split("|")] for row in rows[1:]]


def _layout() -> dict[str, str]:
    """stage folder -> its text, from the Layout code block's ``  name/`` entries under nodes/."""
    block = DOC.split("## Layout", 1)[1].split("```", 2)[1]
    out, current = {}, None
    for line in block.splitlines():
        m = re.match(r"^  (\w+)/\s+(.*)$", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2)
        elif re.match(r"^\S", line):
            current = None
        elif current and line.startswith(" " * 25):
            out[current] += " " + line.strip()
    return out


def test_every_node_is_in_the_table_with_its_display_name_and_adapter():
    code = _schemas()
    rows = {r[0]: r for r in _table("Nodes")}
    assert set(rows) == set(code), f"missing from the doc: {set(code) - set(rows)}; not in the code: {set(rows) - set(code)}"
    for ident, (display, adapter) in code.items():
        assert rows[ident][1] == display, (ident, rows[ident][1], display)
        assert rows[ident][2] == adapter, (ident, rows[ident][2], adapter)
        for where in rows[ident][3].split(", "):   # the logic column names real stages and modules
            target = NODES / where.rstrip("/")
            assert target.is_dir() or target.with_suffix(".py").is_file(), (ident, where)


def test_no_node_id_is_named_that_the_code_lacks():
    named = set(re.findall(r"\bDTGen[A-Z][A-Za-z]+\b", DOC))
    assert named <= set(_schemas()), named - set(_schemas())


def test_socket_types_match_the_code():
    code = set(re.findall(r'io\.Custom\("(DTGEN_[A-Z_]+)"\)', (NODES / "adapters" / "comfy_types.py").read_text()))
    assert {r[0] for r in _table("Custom socket types")} == code
    assert set(re.findall(r"\bDTGEN_[A-Z_]+\b", DOC)) == code


def test_the_layout_names_every_stage_and_every_module():
    layout = _layout()
    stages = {p.name for p in NODES.iterdir() if (p / "__init__.py").is_file()}
    assert set(layout) == stages, f"missing: {stages - set(layout)}; not in the code: {set(layout) - stages}"
    for stage, text in layout.items():
        words = set(re.findall(r"[a-z_]+", text))
        modules = {p.stem for p in (NODES / stage).glob("*.py") if p.stem != "__init__"}
        assert modules <= words, f"{stage}/: modules the doc does not name: {sorted(modules - words)}"


def test_the_import_rule_lists_the_stages_the_layer_test_enforces():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_layers", ROOT / "tests" / "unit" / "test_layers.py")
    layers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layers)
    RANK = layers.RANK
    line = next(l for l in DOC.splitlines() if l.startswith("common  <-"))
    named = set(re.findall(r"[a-z_]+", line.replace(".py", "")))
    assert named == set(RANK), (named ^ set(RANK))


def test_the_runner_entry_names_every_runner_module():
    block = DOC.split("## Layout", 1)[1].split("```", 2)[1]
    entry = block.split("runner/", 1)[1].split("\ntools/", 1)[0]
    words = set(re.findall(r"[a-z_]+", entry))
    runner = ROOT / "runner"
    modules = {p.stem for p in runner.glob("*.py") if not p.stem.startswith("__")}
    packages = {p.name for p in runner.iterdir() if (p / "__init__.py").is_file()}
    inner = {p.stem for pkg in packages for p in (runner / pkg).glob("*.py") if not p.stem.startswith("__")}
    assert modules | packages | inner <= words, sorted((modules | packages | inner) - words)
