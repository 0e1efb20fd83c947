"""DTGen — few-shot synthetic datasets for ComfyUI.

Entry point only. ComfyUI loads this folder as a custom node pack and calls ``comfy_entrypoint``;
anywhere else (tests, scripts, ``python -c "import dtgen"``) the import guard leaves the V3 layer
out, so the plain modules under ``nodes/`` work without ComfyUI. Importing does no heavy work:
no open_clip, no model, no prompt-pack parsing.
"""
__version__ = "0.7.1"
# The editor extension that shows each DTGen node's text on the canvas (served by ComfyUI).
WEB_DIRECTORY = "./nodes/adapters/web"

try:  # import guard: the V3 API exists only inside ComfyUI
    from comfy_api.latest import ComfyExtension as _ComfyExtension  # noqa: F401
except ImportError:
    _ComfyExtension = None

if _ComfyExtension is not None:

    async def comfy_entrypoint():
        """V3 entry point: the extension that lists every DTGen node."""
        from .nodes.extension import DTGenExtension

        return DTGenExtension()
