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

