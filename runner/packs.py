"""The sampler the server will build, rebuilt locally from the same pack file, so the client knows
the label of every item index without asking the server. Pack resolution matches the node's:
the checkout's prompts/ folder first, then the user's pack folders (``--pack-dir``)."""
from __future__ import annotations

from pathlib import Path

from ..nodes.prompting.pack import PromptPackError, find_packs, load_pack, parse_pack
from ..nodes.prompting.sampler import Sampler

SHIPPED_PACKS = Path(__file__).resolve().parents[1] / "prompts"


def pack_dirs(extra=()) -> list[str]:
    return [str(SHIPPED_PACKS), *(str(Path(d).expanduser()) for d in extra)]


def local_sampler(inputs: dict, extra_dirs=()) -> Sampler:
    """``inputs``: the sampler node's pack, mode, seed, classes, inline_yaml."""
    inline = inputs.get("inline_yaml") or ""
    if inline.strip():
        pack = parse_pack(inline, source="<inline_yaml>")
    else:
        dirs = pack_dirs(extra_dirs)
        files = find_packs(dirs)
        name = inputs["pack"]
        if name not in files:
            raise PromptPackError(f"no prompt pack named {name!r} here (looked in {', '.join(dirs)}); "
                                  "pass --pack-dir with the folder that holds it on the server "
                                  "(models/dtgen_prompts)")
        pack = load_pack(files[name])
    subset = [c.strip() for c in (inputs.get("classes") or "").split(",") if c.strip()]
    return Sampler(pack, mode=inputs.get("mode") or "balanced", seed=int(inputs.get("seed") or 0),
                   classes=subset or None)
