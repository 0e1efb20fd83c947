"""Dataset stage: crash-safe labelled image datasets (plain Python; ``node.py`` is the V3 adapter).

Layout and guarantees: docs/dataset-format.md.
"""
