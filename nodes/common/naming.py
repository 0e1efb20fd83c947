"""Central node naming: ids are permanent once landed (saved workflows depend on them)."""

PACK = "DTGen"


def node_id(name: str) -> str:
    """Permanent node id, e.g. ``node_id("PromptSampler") == "DTGenPromptSampler"``."""
    return f"{PACK}{name}"


def category(stage: str) -> str:
    """Menu category of a stage, e.g. ``category("prompting") == "DTGen/prompting"``."""
    return f"{PACK}/{stage}"
