"""Where things live inside ComfyUI (ComfyUI only): one resolver for datasets and one for the
user's folders of images (photo sets, cutouts, backgrounds)."""
from __future__ import annotations

import os
import threading

import folder_paths

from ..store.paths import DatasetPathError, safe_dataset_dir


def dataset_dir(name: str, required: bool = False):
    """The dataset folder for ``name`` under ComfyUI's output directory. A blank name gives
    ``None`` (no dataset), or an error when ``required``. Unsafe names raise ``DatasetPathError``
    (nothing can leave the output directory)."""
    if not name or not name.strip():
        if required:
            raise DatasetPathError("dataset name", name, "empty name")
        return None
    return safe_dataset_dir(folder_paths.get_output_directory(), name)


INPUT_PREFIX = "input/"


def register_folder(name: str) -> None:
    """``models/<name>``, mappable in ``extra_model_paths.yaml`` like any model folder."""
    folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))


def _subfolders(folder: str) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))
    except OSError:
        return []


def folder_sets(model_folder: str) -> dict[str, str]:
    """``{name: folder}``: every sub-folder of the registered model folder ``model_folder`` by its
    name (the first folder listing a name wins), then every top-level sub-folder of ComfyUI's
    ``input/`` as ``input/<name>``. Only listed names resolve, so a typed path reaches nothing else."""
    sets: dict[str, str] = {}
    for base in folder_paths.get_folder_paths(model_folder):
        for name in _subfolders(base):
            sets.setdefault(name, os.path.join(base, name))
    input_dir = folder_paths.get_input_directory()
    for name in _subfolders(input_dir):
        sets.setdefault(INPUT_PREFIX + name, os.path.join(input_dir, name))
    return sets


def resolve_set(model_folder: str, name: str, what: str, error=ValueError) -> str:
    """The folder of a listed set; ``error(None, message)`` names what was looked for and where."""
    sets = folder_sets(model_folder)
    if name not in sets:
        where = ", ".join(folder_paths.get_folder_paths(model_folder))
        raise error(None, f"no {what} named {name!r}; found: {', '.join(sets) or 'none'}. Put it in {where} "
                          "(or in ComfyUI's input folder) and refresh")
    return sets[name]


def listing_fingerprint(root: str) -> str:
    """Names, sizes and times of a folder's files: a changed folder reruns the node using it."""
    import hashlib

    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            try:
                st = os.stat(os.path.join(dirpath, name), follow_symlinks=False)
            except OSError:
                continue
            h.update(f"{os.path.relpath(os.path.join(dirpath, name), root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


_BUILT: dict = {}               # a few stages built from folders: validation, then execution, then requeues
_BUILT_LOCK = threading.Lock()
_BUILT_SIZE = 4


def cached_build(key, make):
    """``make()`` once per ``key`` (which should hold the folders' ``listing_fingerprint``), keeping
    the last few builds: a changed folder is a new key, so a stale stage is never reused."""
    with _BUILT_LOCK:
        found = _BUILT.pop(key, None)
        if found is not None:
            _BUILT[key] = found          # most recently used last
    if found is None:
        found = make()
        with _BUILT_LOCK:
            _BUILT[key] = found
            while len(_BUILT) > _BUILT_SIZE:
                del _BUILT[next(iter(_BUILT))]
    return found
