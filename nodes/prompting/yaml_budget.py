"""Reading a pack's YAML within fixed budgets, and refusing keys written twice.

A pack is user input, parsed while ComfyUI's server validates a queued prompt, so each budget is
checked before the work it bounds: the YAML text itself, its nesting and alias uses while it is
composed, then what its aliases expand to, before anything is constructed. A refusal names the
limit, the value and the YAML path. yaml is imported lazily so that listing packs stays cheap.
"""
from __future__ import annotations

from ..common.errors import shown
from .pack_model import PromptPackError, format_path

MAX_PACK_BYTES = 256 * 1024      # YAML text (UTF-8)
MAX_YAML_DEPTH = 64              # nested mappings / sequences
MAX_YAML_ALIASES = 1000          # `*anchor` uses, each counted once
MAX_YAML_NODES = 200_000         # nodes after expanding every alias (billion laughs stops here)
MAX_YAML_CHARS = 4 * 1024 * 1024  # scalar characters after expanding every alias


def read_yaml(text: str, source: str) -> tuple:
    """``(composed node tree, constructed data)`` of one YAML document, both ``None`` when it is
    empty. The node tree gives line numbers; every problem raises ``PromptPackError``."""
    import yaml

    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_PACK_BYTES:
        raise PromptPackError(f"the pack is {size} bytes of YAML; the limit is {MAX_PACK_BYTES} bytes "
                              "(MAX_PACK_BYTES)", file=source)
    try:
        loader = _budgeted_loader(yaml)(text, source)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_expanded_size(node, source)
                # as written: constructing merges "<<: *base" into the mapping, where a key that
                # overrides a merged one (as YAML allows) would look written twice
                _check_duplicate_keys(node, source)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        message = f"malformed YAML: {problem}" + (f" ({context})" if context else "")
        raise PromptPackError(message, file=source, line=mark.line + 1 if mark else None) from None
    return node, data


_LOADERS: dict = {}


def _budgeted_loader(yaml):
    """A SafeLoader whose composer counts nesting depth and alias uses as it goes (PyYAML composes
    recursively: without a depth bound a deeply nested document ends in RecursionError)."""
    if "loader" in _LOADERS:
        return _LOADERS["loader"]

    class BudgetedLoader(yaml.SafeLoader):
        def __init__(self, text, source):
            super().__init__(text)
            self.source, self.path, self.aliases = source, [], 0

        def compose_node(self, parent, index):
            mark = self.peek_event().start_mark
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    raise self.refuse(f"more than {MAX_YAML_ALIASES} aliases (*anchor uses); the limit is "
                                      f"{MAX_YAML_ALIASES} (MAX_YAML_ALIASES)", mark)
                return super().compose_node(parent, index)
            if isinstance(index, int):
                self.path.append(index)
            elif index is not None:
                self.path.append(getattr(index, "value", "?"))
            if len(self.path) > MAX_YAML_DEPTH:
                raise self.refuse(f"YAML nested more than {MAX_YAML_DEPTH} levels deep; the limit is "
                                  f"{MAX_YAML_DEPTH} (MAX_YAML_DEPTH)", mark)
            try:
                return super().compose_node(parent, index)
            finally:
                if index is not None:
                    self.path.pop()

        def refuse(self, message, mark):
            shown = format_path(tuple(self.path[:8])) + (" ..." if len(self.path) > 8 else "")
            return PromptPackError(message, file=self.source, path=shown or None, line=mark.line + 1)

    _LOADERS["loader"] = BudgetedLoader
    return BudgetedLoader


def _check_expanded_size(root, source: str) -> None:
    """Refuse a document whose aliases expand past MAX_YAML_NODES nodes or MAX_YAML_CHARS scalar
    characters. Each node's expanded size is computed once (memo by identity), so this is linear in
    the composed document, not in its expansion."""
    memo: dict = {}

    def size(node) -> tuple:
        found = memo.get(id(node))
        if found is not None:
            return found
        if node.id == "scalar":
            found = (1, len(node.value))
        else:
            children = node.value if node.id == "sequence" else [n for pair in node.value for n in pair]
            nodes, chars = 1, 0
            for child in children:   # depth is bounded by MAX_YAML_DEPTH: recursion is safe
                n, c = size(child)
                nodes, chars = nodes + n, chars + c
            found = (nodes, chars)
        memo[id(node)] = found
        return found

    nodes, chars = size(root)
    if nodes <= MAX_YAML_NODES and chars <= MAX_YAML_CHARS:
        return
    where, biggest = None, -1
    if root.id == "mapping":    # name the top-level key that expands the most
        for key, value in root.value:
            n = size(value)[0] + size(value)[1]
            if n > biggest:
                where, biggest = key.value if key.id == "scalar" else None, n
    what = (f"{nodes} YAML nodes (limit {MAX_YAML_NODES}, MAX_YAML_NODES)" if nodes > MAX_YAML_NODES else
            f"{chars} characters of text (limit {MAX_YAML_CHARS}, MAX_YAML_CHARS)")
    raise PromptPackError(f"aliases expand this pack to {what}; an alias (*name) repeats its anchor's "
                          "whole content every time it is used", file=source, path=where)


def _check_duplicate_keys(root, source: str) -> None:
    """PyYAML silently keeps the last of two equal keys; a pack must not lose the first. Each node
    is checked once, however many aliases point at it (billion laughs)."""
    seen_nodes: set = set()
    stack = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if node.id == "mapping":
            seen, children = set(), []
            for key, value in node.value:
                name = key.value if key.id == "scalar" else None
                if name in seen:
                    raise PromptPackError(f"key {shown(name)} appears twice", file=source,
                                          path=format_path(path) or None, line=key.start_mark.line + 1)
                seen.add(name)
                children.append((value, path + ((name,) if name is not None else ())))
            stack.extend(reversed(children))     # depth first, in document order
        elif node.id == "sequence":
            stack.extend(reversed([(value, path + (index,)) for index, value in enumerate(node.value)]))
