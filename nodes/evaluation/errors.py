"""The evaluation stage's one exception type."""
from __future__ import annotations

from ..common.errors import PathProblem
from ..common.naming import public_error


@public_error
class EvaluationError(PathProblem, ValueError):
    """An evaluation cannot run as asked; ``path`` names the file or folder at fault (or is None)."""
