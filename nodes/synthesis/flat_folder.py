"""The one scan of a flat folder of the user's files (backgrounds, real masks): real files only,
in name order, dot-files and other suffixes skipped, a count budget. Each caller says in its own
words what the folder holds; the walk and its refusals are the same."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import SynthesisError


@dataclass(frozen=True)
class Wording:
    missing: str          # the folder does not exist
    folder_link: str      # the folder is a symlink
    not_folder: str       # the folder is a file
    entry_link: str       # an entry is a symlink
    entry_folder: str     # an entry is a folder
    plural: str           # "backgrounds": "holds more than max_files=N backgrounds"


def flat_files(folder, suffixes, max_files: int, say: Wording) -> list[Path]:
    """The files of ``folder`` whose suffix (lower-case) is in ``suffixes``, in name order;
    ``SynthesisError`` naming the folder or entry otherwise."""
    folder = Path(folder)
    try:
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        raise SynthesisError(folder, say.missing) from None
    if stat.S_ISLNK(mode):
        raise SynthesisError(folder, say.folder_link)
    if not stat.S_ISDIR(mode):
        raise SynthesisError(folder, say.not_folder)
    with os.scandir(folder) as it:
        listing = sorted(it, key=lambda e: e.name)
    out = []
    for entry in listing:
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            raise SynthesisError(entry.path, say.entry_link)
        if entry.is_dir(follow_symlinks=False):
            raise SynthesisError(entry.path, say.entry_folder)
        if os.path.splitext(entry.name)[1].lower() not in suffixes:
            continue
        if len(out) >= max_files:
            raise SynthesisError(folder, f"holds more than max_files={max_files} {say.plural}")
        out.append(Path(entry.path))
    return out
