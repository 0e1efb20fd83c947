"""CLIP similarity filter: load a local CLIP model, score images against text, decide per class.

Plain Python (``node.py`` is the only ComfyUI adapter). ``torch`` and ``open_clip`` are imported
lazily inside the functions that need them, so importing this package stays cheap.
"""
