"""The sampler the server will build, rebuilt locally from the same pack file, so the client knows
the label of every item index without asking the server. Pack resolution is the node's own
(``nodes/prompting/catalog.py``): the checkout's prompts/ folder first, then ``--pack-dir`` folders
in the server's order, so clash names such as ``user/tableware.yaml`` mean the same file."""
from __future__ import annotations

from ..nodes.prompting.catalog import USER_FOLDER, build_sampler
from ..nodes.prompting.sampler import Sampler

__all__ = ["local_sampler"]

MISSING_HINT = f"pass --pack-dir with the folder that holds it on the server (models/{USER_FOLDER})"


def local_sampler(inputs: dict, extra_dirs=()) -> Sampler:
    """``inputs``: the sampler node's pack, mode, seed, classes, inline_yaml."""
    return build_sampler(inputs.get("pack", ""), inputs.get("mode") or "balanced", int(inputs.get("seed") or 0),
                         inputs.get("classes") or "", inputs.get("inline_yaml") or "", extra_dirs,
                         missing_hint=MISSING_HINT)
