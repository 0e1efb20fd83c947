"""The filtering stage's one exception type."""
from __future__ import annotations

from ..common.naming import public_error


@public_error
class ClipFilterError(ValueError):
    """Bad input to the CLIP filter; ``location`` names the file, item or parameter at fault."""

    def __init__(self, message: str, location: str | None = None):
        super().__init__(f"{location}: {message}" if location else message)
        self.location = location
