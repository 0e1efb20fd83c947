"""Central node naming: ids are permanent once landed (saved workflows depend on them)."""

PACK = "DTGen"


def node_id(name: str) -> str:
    """Permanent node id, e.g. ``node_id("PromptSampler") == "DTGenPromptSampler"``."""
    return f"{PACK}{name}"


def category(stage: str) -> str:
    """Menu category of a stage, e.g. ``category("prompting") == "DTGen/prompting"``."""
    return f"{PACK}/{stage}"


def public_error(cls):
    """Show an error class as ``dtgen.<Name>``: ComfyUI prints an exception's type as
    ``module.qualname`` and names a custom-node module by its folder's full path."""
    cls.__module__ = PACK.lower()
    return cls


# File names a dataset's layout keeps beside the label folders (``images/metadata.jsonl``) or in
# its root, and those ``datasets``' imagefolder reads as metadata: a label (a folder) may not take
# one of them, in any letter case. tests/unit check that layout.py's names are all here.
RESERVED_LABELS = frozenset({"metadata.jsonl", "metadata.csv", "metadata.parquet", "manifest.jsonl",
                             "dataset.json", "claims.json"})


def reserved_label(label: str) -> bool:
    return label.casefold() in RESERVED_LABELS
