"""``python -m runner demo``: one command from a checkout to a small labelled dataset.

command.py: the command (find and start ComfyUI, queue the templates, finalize); photos.py: the
few-shot photo set (the user's or drawn placeholders); cutouts.py: the copy-paste step's cutout
and background sets and its run. The tiny models are built by runner/demo_models.py, a script run
by path with ComfyUI's Python.
"""
from .command import TINY, WORKFLOW, add_demo_args, build_tiny_models, cmd_demo

__all__ = ["TINY", "WORKFLOW", "add_demo_args", "build_tiny_models", "cmd_demo"]
