"""Which prompt packs exist and the sampler a node's inputs ask for (plain Python).

One place for both the V3 node (user folders from ComfyUI's ``folder_paths``) and the queue
client (``--pack-dir``), so both resolve a pack name to the same file and build the same sampler.

Naming: a pack is listed by its file stem (``tableware``). A stem that is already taken (by a
shipped pack, a pack of an earlier user folder, or a ``.yaml``/``.yml`` twin in the same folder)
is listed as ``<folder tag>/<file name>`` instead, e.g. ``user/tableware.yaml``, and a warning
names both files. So shipped names always mean the shipped file (saved workflows keep working)
and no file is hidden.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from .pack import PACK_SUFFIXES, PromptPackError, load_pack, parse_pack
from .sampler import Sampler

SHIPPED_PACKS = Path(__file__).resolve().parents[2] / "prompts"
USER_FOLDER = "dtgen_prompts"  # ComfyUI model folder name: models/dtgen_prompts

_log = logging.getLogger(__name__)
_warned: set = set()  # clashes already reported; the node lists packs on every UI refresh
_warned_lock = threading.Lock()


def _folder_tag(user_index: int) -> str:
    """Prefix of a clashing pack's name: ``user`` for the first user folder, ``user2``, ... after."""
    return "user" if user_index == 0 else f"user{user_index + 1}"


def _folders(user_dirs) -> list[tuple[str, str]]:
    """``(tag, folder)``: the shipped folder first (its names stay stable), then the user folders.

    A tag is fixed by the folder's position in ``user_dirs``; a folder listed twice (or the shipped
    folder listed again as a user folder) is read once, so its packs do not clash with themselves.
    """
    folders = [("shipped", str(SHIPPED_PACKS))]
    seen = {os.path.realpath(SHIPPED_PACKS)}
    for index, folder in enumerate(user_dirs):
        folder = str(Path(folder).expanduser())
        real = os.path.realpath(folder)
        if real not in seen:
            seen.add(real)
            folders.append((_folder_tag(index), folder))
    return folders


def _pack_file_names(folder: str) -> list[str]:
    """Sorted ``*.yaml`` / ``*.yml`` file names in ``folder`` (not parsed); none if it is missing."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [name for name in names if os.path.splitext(name)[1].lower() in PACK_SUFFIXES
            and os.path.isfile(os.path.join(folder, name))]


def _warn_clash(stem: str, name: str, path: str, kept: str) -> None:
    with _warned_lock:
        if (path, kept) in _warned:
            return
        _warned.add((path, kept))
    _log.warning("DTGen: prompt pack %s is listed as %r: the name %r already means %s", path, name, stem, kept)


def pack_files(user_dirs=()) -> dict[str, str]:
    """``{pack name: path}`` of every pack file, sorted by name (naming rule: module docstring)."""
    found: dict[str, str] = {}
    for tag, folder in _folders(user_dirs):
        for file_name in _pack_file_names(folder):
            stem, path = os.path.splitext(file_name)[0], os.path.join(folder, file_name)
            if stem not in found:
                found[stem] = path
            else:
                name = f"{tag}/{file_name}"
                found[name] = path
                _warn_clash(stem, name, path, found[stem])
    return dict(sorted(found.items()))


def pack_path(name: str, user_dirs=(), missing_hint: str = f"user packs go in models/{USER_FOLDER}") -> str:
    """The file of pack ``name``; an unknown name raises an error listing the names and folders."""
    files = pack_files(user_dirs)
    if name not in files:
        looked = ", ".join(folder for _, folder in _folders(user_dirs))
        raise PromptPackError(f"no prompt pack named {name!r}; found: {', '.join(files) or 'none'} "
                              f"(looked in {looked}; {missing_hint})")
    return files[name]


_INLINE: dict = {}
_INLINE_SIZE = 8


def _inline_pack(text: str):
    """Parse inline YAML once per text (validation at queue time, then execution)."""
    with _warned_lock:
        found = _INLINE.get(text)
    if found is None:
        found = parse_pack(text, source="<inline_yaml>")
        with _warned_lock:
            while len(_INLINE) >= _INLINE_SIZE:
                del _INLINE[next(iter(_INLINE))]
            _INLINE[text] = found
    return found


def build_sampler(pack: str, mode: str = "balanced", seed: int = 0, classes: str = "", inline_yaml: str = "",
                  user_dirs=(), *, missing_hint: str = f"user packs go in models/{USER_FOLDER}") -> Sampler:
    """The sampler for a node's inputs; ``inline_yaml`` (when not blank) replaces the pack file."""
    if inline_yaml and inline_yaml.strip():
        loaded = _inline_pack(inline_yaml)
    else:
        loaded = load_pack(pack_path(pack, user_dirs, missing_hint))
    subset = [c.strip() for c in (classes or "").split(",") if c.strip()]
    return Sampler(loaded, mode=mode, seed=seed, classes=subset or None)
