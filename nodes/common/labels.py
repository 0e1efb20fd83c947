"""The one rule for class labels: a label is a folder name in every dataset, on Linux, macOS and
Windows, so the prompt-pack validator and the dataset writer check it with the same function."""
from __future__ import annotations

import re
import unicodedata

MAX_LABEL_LENGTH = 100
_LABEL_CHARS = re.compile(r"[A-Za-z0-9_.-]+\Z")
WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"COM{n}" for n in range(1, 10)] + [f"LPT{n}" for n in range(1, 10)]
)
# File names a dataset's layout keeps beside the label folders (``images/metadata.jsonl``) or in
# its root, and those ``datasets``' imagefolder reads as metadata: a label (a folder) may not take
# one of them, in any letter case. tests/unit check that store/layout.py's names are all here.
RESERVED_LABELS = frozenset({"metadata.jsonl", "metadata.csv", "metadata.parquet", "manifest.jsonl",
                             "dataset.json", "claims.json"})


def normalise_label(label: str) -> str:
    """NFKC (full-width look-alikes become ASCII), trimmed, whitespace runs -> ``_``."""
    return re.sub(r"\s+", "_", unicodedata.normalize("NFKC", label).strip())


def _char(ch: str) -> str:
    """A character and its code point (and name): a look-alike letter shows what it is,
    e.g. 'а' (U+0430 CYRILLIC SMALL LETTER A)."""
    name = unicodedata.name(ch, "")
    return f"{ch!r} (U+{ord(ch):04X}{' ' + name if name else ''})"


def folder_name_problem(name: str, what: str, letter_first: bool = False) -> str | None:
    """Why ``name`` cannot be one folder's name on Linux, macOS and Windows alike, or None: the rule
    labels and each part of a dataset name share (``what`` starts the message: "label", "name part");
    ``letter_first``: it must also start with a letter or digit (labels)."""
    if len(name) > MAX_LABEL_LENGTH:
        return f"{what} {name!r} is longer than {MAX_LABEL_LENGTH} characters"
    if not _LABEL_CHARS.match(name):
        bad = sorted({ch for ch in name if not re.match(r"[A-Za-z0-9_.-]", ch)})
        shown = ", ".join(_char(ch) for ch in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        return (f"{what} {name[:MAX_LABEL_LENGTH]!r} contains {shown}; {what}s are folder names and "
                "may use only ASCII letters, digits, '_', '-' and '.'")
    if letter_first and not name[0].isalnum():
        return f"{what} {name!r} must start with a letter or digit"
    if name.endswith("."):
        return f"{what} {name!r} must not end with '.' (Windows drops it)"
    if name.split(".")[0].upper() in WINDOWS_RESERVED:
        return (f"{what} {name!r} is a reserved Windows device name (CON, PRN, AUX, NUL, COM1-9 and LPT1-9: "
                "each a reserved device name on Windows)")
    return None


def label_problem(label: str) -> str | None:
    """Why ``label`` is not a safe folder name, or None: the folder-name rule, and a label must also
    start with a letter or digit, hold no '..' and not take a name the dataset layout uses."""
    if not label:
        return "label is empty"
    problem = folder_name_problem(label, "label", letter_first=True)
    if problem:
        return problem
    if ".." in label:
        return f"label {label!r} must not contain '..'"
    if label.casefold() in RESERVED_LABELS:
        return f"label {label!r} is a file name the dataset layout uses; choose another label"
    return None


def default_class_text(label: str) -> str:
    """The CLIP text of a class without ``clip_text``: ``plate_clean`` -> ``a photo of plate clean``."""
    return "a photo of " + " ".join(re.split(r"[_.\-]+", label)).strip()
