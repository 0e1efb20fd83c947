"""The one error of the synthesis stage. It is a ``FewShotError`` (same ``path`` + problem shape,
caught by the same handlers), since cutouts and backgrounds are the user's real images too."""
from __future__ import annotations

from ..common.naming import public_error
from ..fewshot.imageset import FewShotError


@public_error
class SynthesisError(FewShotError):
    """Cutouts, backgrounds or copy-paste parameters that cannot be used; ``path`` names the file or
    folder (None for a parameter, whose name then starts the message)."""
