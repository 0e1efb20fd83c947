"""Prompting stage: prompt packs (``pack.py``) and the deterministic prompt sampler (``sampler.py``).

Plain Python; ``node.py`` is the V3 adapter. Nothing is imported eagerly.
"""
