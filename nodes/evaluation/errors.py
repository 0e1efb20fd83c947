"""The evaluation stage's one exception type."""
from __future__ import annotations

from pathlib import Path

from ..common.naming import public_error


@public_error
class EvaluationError(ValueError):
    """An evaluation cannot run as asked; ``path`` names the file or folder at fault (or is None)."""

    def __init__(self, path, problem: str):
        self.path = None if path is None else Path(path)
        super().__init__(problem if path is None else f"{path}: {problem}")
