"""Which prompt packs exist and the sampler a node's inputs ask for (plain Python).

One place for both the V3 node (user folders from ComfyUI's ``folder_paths``) and the queue
client (``--pack-dir``), so both resolve a pack name to the same file and build the same sampler.
"""
from __future__ import annotations

from pathlib import Path

from .pack import PromptPackError, find_packs, load_pack, parse_pack
from .sampler import Sampler

SHIPPED_PACKS = Path(__file__).resolve().parents[2] / "prompts"
USER_FOLDER = "dtgen_prompts"  # ComfyUI model folder name: models/dtgen_prompts


def pack_dirs(user_dirs=()) -> list[str]:
    """Shipped packs first (their names stay stable), then the user's folders."""
    return [str(SHIPPED_PACKS), *(str(Path(d).expanduser()) for d in user_dirs)]


def pack_files(user_dirs=()) -> dict[str, str]:
    return find_packs(pack_dirs(user_dirs))


def build_sampler(pack: str, mode: str = "balanced", seed: int = 0, classes: str = "", inline_yaml: str = "",
                  user_dirs=()) -> Sampler:
    """The sampler for a node's inputs; ``inline_yaml`` (when not blank) replaces the pack file."""
    if inline_yaml and inline_yaml.strip():
        loaded = parse_pack(inline_yaml, source="<inline_yaml>")
    else:
        dirs = pack_dirs(user_dirs)
        files = find_packs(dirs)
        if pack not in files:
            raise PromptPackError(f"no prompt pack named {pack!r}; found: {', '.join(files) or 'none'} "
                                  f"(looked in {', '.join(dirs)}; user packs go in models/{USER_FOLDER})")
        loaded = load_pack(files[pack])
    subset = [c.strip() for c in (classes or "").split(",") if c.strip()]
    return Sampler(loaded, mode=mode, seed=seed, classes=subset or None)
