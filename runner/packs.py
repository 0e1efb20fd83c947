"""The sampler the server will build, rebuilt locally from the same pack file, so the client knows
the label of every item index without asking the server. Pack resolution is the node's own
(``nodes/prompting/catalog.py``): the checkout's prompts/ folder first, then ``--pack-dir``."""
from __future__ import annotations

from ..nodes.prompting.catalog import SHIPPED_PACKS, build_sampler, pack_dirs, pack_files
from ..nodes.prompting.pack import PromptPackError
from ..nodes.prompting.sampler import Sampler

__all__ = ["SHIPPED_PACKS", "local_sampler", "pack_dirs"]


def local_sampler(inputs: dict, extra_dirs=()) -> Sampler:
    """``inputs``: the sampler node's pack, mode, seed, classes, inline_yaml."""
    name, inline = inputs.get("pack", ""), inputs.get("inline_yaml") or ""
    if not inline.strip() and name not in pack_files(extra_dirs):
        raise PromptPackError(f"no prompt pack named {name!r} here (looked in {', '.join(pack_dirs(extra_dirs))}); "
                              "pass --pack-dir with the folder that holds it on the server (models/dtgen_prompts)")
    return build_sampler(name, inputs.get("mode") or "balanced", int(inputs.get("seed") or 0),
                         inputs.get("classes") or "", inline, extra_dirs)
