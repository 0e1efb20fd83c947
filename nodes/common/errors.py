"""The one shape of the pack's file errors: the problem, prefixed by the file or folder it is about;
and the one cap on how much of a user's value an error message repeats."""
from __future__ import annotations

from pathlib import Path

MAX_SHOWN = 300   # characters of a user's value echoed in an error (a 100 KB key is not repeated back)


def clip(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` cut to ``limit`` characters, saying how many were left out."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def shown(value, limit: int = 120) -> str:
    """A user's value as a message quotes it: ``repr(value)``, clipped."""
    return clip(repr(value), limit)


class PathProblem(Exception):
    """Mixed into each stage's error (``class FewShotError(PathProblem, ValueError)``): ``path`` names
    the file or folder at fault, or is None for a parameter, whose name then starts ``problem``.
    ``NAME_ONLY`` errors print the file name, not the whole path (files picked from a model list)."""

    NAME_ONLY = False

    def __init__(self, path, problem: str):
        self.path = None if path is None else Path(path)
        shown = None if path is None else (self.path.name if self.NAME_ONLY else path)
        super().__init__(problem if path is None else f"{shown}: {problem}")
