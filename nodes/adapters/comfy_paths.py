"""Where a dataset lives inside ComfyUI (ComfyUI only): one resolver for every node."""
from __future__ import annotations

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
