"""Prompting stage: prompt packs (``pack.py``, the entry point; ``pack_model.py``,
``yaml_budget.py``, ``pack_checks.py``, ``slot_checks.py``), the deterministic prompt sampler
(``sampler.py``) and which packs exist (``catalog.py``).

Plain Python; ``nodes/adapters/prompt_sampler.py`` is the V3 adapter. Nothing is imported eagerly.
"""
