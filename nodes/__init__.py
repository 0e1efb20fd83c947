"""DTGen nodes, one sub-package per pipeline stage: prompting -> filtering -> dataset.

Every module here is plain Python except each stage's ``node.py``, the thin V3 adapter that
translates between ComfyUI types and the stage's logic. Nothing is imported eagerly.
"""
