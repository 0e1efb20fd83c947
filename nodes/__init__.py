"""DTGen nodes, one sub-package per pipeline stage (docs/architecture.md has the map).

Every stage is plain Python, unit-tested without ComfyUI; ``adapters/`` is the only ComfyUI code,
one thin V3 module per node family translating between ComfyUI values and the stages' calls, and
``extension.py`` lists their nodes. Nothing is imported eagerly.
"""
