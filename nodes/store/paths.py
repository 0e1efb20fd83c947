"""Safe names for dataset folders, labels and files: nothing may leave the output directory.

A name is NFKC-normalised (so full-width look-alikes become ASCII), then must be plain ASCII
``[A-Za-z0-9._-]``, must not start with a dot, end with a dot, or be a Windows device name
(``CON``, ``NUL.txt``, ``COM1`` ...). Dataset names may be nested with ``/``; labels may not.
"""
from __future__ import annotations

import unicodedata
from pathlib import Path

from ..common.labels import folder_name_problem, label_problem, normalise_label
from ..common.naming import public_error

MAX_DATASET_NAME = 200   # the whole name, sub-folders included
PATH_MAX = 4096          # Linux; the longest path DTGen makes inside a dataset must fit
INNER_RESERVE = 256      # longest path below the dataset folder: orphans/damaged/<tree>/<label>/<file>.tmp-...


@public_error
class DatasetPathError(ValueError):
    """A dataset name, label or file name that is unsafe; ``field`` and ``value`` say which."""

    def __init__(self, field: str, value, problem: str):
        self.field, self.value = field, value
        super().__init__(f"{field} {value!r}: {problem}")


def _check_part(part: str, field: str, original) -> str:
    """One path segment of a dataset name: not empty, not '.'/'..', not hidden, then the folder-name
    rule labels use too (``common.labels.folder_name_problem``)."""
    if not part:
        raise DatasetPathError(field, original, "empty name (or empty path segment)")
    if part in (".", ".."):
        raise DatasetPathError(field, original, "'.' and '..' are not allowed")
    if part.startswith("."):
        raise DatasetPathError(field, original, "must not start with '.' (hidden / reserved for DTGen files)")
    problem = folder_name_problem(part, "name part")
    if problem:
        raise DatasetPathError(field, original, problem)
    return part


def _normalise(value, field: str) -> str:
    if not isinstance(value, str):
        raise DatasetPathError(field, value, "must be a string")
    return unicodedata.normalize("NFKC", value).strip()


def safe_label(label: str) -> str:
    """Folder name for a class label; whitespace runs become ``_`` (``"tea cup"`` -> ``"tea_cup"``).
    The rule itself is ``common.labels.label_problem``, the same the prompt-pack validator uses."""
    if not isinstance(label, str):
        raise DatasetPathError("label", label, "must be a string")
    folder = normalise_label(label)
    problem = label_problem(folder)
    if problem:
        raise DatasetPathError("label", label, problem)
    return folder


def safe_dataset_dir(output_dir, name: str) -> Path:
    """``output_dir / name`` after checking ``name`` (nested with '/' allowed) stays inside ``output_dir``."""
    text = _normalise(name, "dataset name")
    if "\\" in text or ":" in text:
        raise DatasetPathError("dataset name", name, "must not contain '\\' or ':' (use '/' to nest)")
    if text.startswith("/"):
        raise DatasetPathError("dataset name", name, "must be relative, not an absolute path")
    if len(text) > MAX_DATASET_NAME:
        raise DatasetPathError("dataset name", name[:40] + "...", f"is {len(text)} characters long; the limit is "
                               f"{MAX_DATASET_NAME}")
    parts = [_check_part(p, "dataset name", name) for p in text.split("/")]
    root = Path(output_dir).resolve()
    target = root.joinpath(*parts)
    # A symlinked folder inside output_dir could still point outside it.
    if not target.resolve().is_relative_to(root):
        raise DatasetPathError("dataset name", name, f"resolves outside the output directory {root}")
    if len(str(target)) + INNER_RESERVE > PATH_MAX:
        raise DatasetPathError("dataset name", name, f"makes paths longer than the system allows ({len(str(target))} "
                               f"characters for the folder, {PATH_MAX - INNER_RESERVE} at most under {root})")
    return target

