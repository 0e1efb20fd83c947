"""Where a dataset lives inside ComfyUI (ComfyUI only): one resolver for every node."""
from __future__ import annotations

import folder_paths

from ..store.paths import safe_dataset_dir


def dataset_dir(name: str):
    """The dataset folder for ``name`` under ComfyUI's output directory; ``None`` for a blank name.
    Unsafe names raise ``DatasetPathError`` (nothing can leave the output directory)."""
    if not name or not name.strip():
        return None
    return safe_dataset_dir(folder_paths.get_output_directory(), name)
