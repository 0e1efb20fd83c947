"""The user's few real images: an ImageFolder ``<root>/<label>/*.png`` with optional captions
(``<stem>.txt`` beside an image), scanned strictly, split per label by a seeded hash."""
from __future__ import annotations

import hashlib
import os
import stat
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..common.errors import PathProblem
from ..common.files import read_regular
from ..common.labels import label_problem
from ..common.naming import public_error

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
CAPTION_SUFFIX = ".txt"
MAX_CAPTION_CHARS = 2_000
_MAX_CAPTION_BYTES = 64 * 1024   # larger caption files are refused before they are read


@public_error
class FewShotError(PathProblem, ValueError):
    """The real images cannot be used as asked; ``path`` names the file or folder (or is None)."""


@dataclass(frozen=True)
class RealImage:
    path: Path
    label: str
    caption: str | None = None


def _is_link(entry: os.DirEntry) -> bool:
    return entry.is_symlink() or getattr(entry, "is_junction", lambda: False)()


def _refuse_link(path: str) -> None:
    raise FewShotError(path, f"is a symlink (to {os.readlink(path)}); the real images may not contain "
                       "symlinks, which could read files outside the allowed folder. Replace it by a real "
                       "file or folder; nothing was read through it")


def _entries(folder: Path) -> list[os.DirEntry]:
    """Entries of ``folder`` by name; a symlink anywhere is refused; hidden entries are dropped."""
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if _is_link(entry):
            _refuse_link(entry.path)
    return [e for e in entries if not e.name.startswith(".")]


def _read_caption(path: str) -> str | None:
    try:
        if os.stat(path, follow_symlinks=False).st_size > _MAX_CAPTION_BYTES:
            raise FewShotError(path, f"caption is longer than {MAX_CAPTION_CHARS} characters")
        text = read_regular(path, _MAX_CAPTION_BYTES).decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise FewShotError(path, f"caption is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise FewShotError(path, f"caption cannot be read ({e.strerror or e})") from None
    if len(text) > MAX_CAPTION_CHARS:
        raise FewShotError(path, f"caption has {len(text)} characters; at most {MAX_CAPTION_CHARS} are allowed")
    return text or None


def scan(root, *, max_files: int = 10_000) -> list[RealImage]:
    """Every image of ``<root>/<label>/``, sorted by (label, file name), captions read.

    Refused (``FewShotError`` naming the path): a missing root or one that is not a folder, a root
    without class folders, a label folder name that is not a valid label, two labels differing only
    by case, a class folder without images, a folder inside a class folder, a symlink anywhere, more
    than ``max_files`` images. Files that are neither images nor ``.txt`` captions are ignored, and
    so are hidden files and folders.
    """
    if isinstance(max_files, bool) or not isinstance(max_files, int) or max_files < 1:
        raise FewShotError(None, f"max_files must be a positive integer, got {max_files!r}")
    root = Path(root)
    try:
        mode = os.lstat(root).st_mode
    except FileNotFoundError:
        raise FewShotError(root, "folder of real images does not exist") from None
    if stat.S_ISLNK(mode):
        _refuse_link(str(root))
    if not stat.S_ISDIR(mode):
        raise FewShotError(root, "is not a folder; expected <root>/<label>/<image> folders")

    top = _entries(root)
    class_dirs = [e for e in top if e.is_dir(follow_symlinks=False)]
    if not class_dirs:
        loose = sum(Path(e.name).suffix.lower() in IMAGE_SUFFIXES for e in top)
        raise FewShotError(root, "has no class folders; put the images in <root>/<label>/ folders, one per "
                           f"label ({loose} image file(s) found directly in the root)")
    images: list[RealImage] = []
    folded: dict[str, str] = {}
    for folder in class_dirs:
        label = folder.name
        problem = label_problem(label)
        if problem:
            raise FewShotError(folder.path, f"class folder name is not a valid label: {problem}")
        if folded.setdefault(label.casefold(), label) != label:
            raise FewShotError(folder.path, f"labels {folded[label.casefold()]!r} and {label!r} differ only by "
                               "case (they would be one folder on Windows and macOS)")
        entries = _entries(Path(folder.path))
        names = {e.name for e in entries}
        found = 0
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                raise FewShotError(entry.path, "is a folder inside class folder "
                                   f"{label!r}; put the images directly in <root>/{label}/")
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() not in IMAGE_SUFFIXES:
                continue
            found += 1
            if len(images) >= max_files:
                raise FewShotError(root, f"holds more than max_files={max_files} images")
            caption_name = stem + CAPTION_SUFFIX
            caption = _read_caption(os.path.join(folder.path, caption_name)) if caption_name in names else None
            images.append(RealImage(Path(entry.path), label, caption))
        if not found:
            raise FewShotError(folder.path, "class folder holds no image (" + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
    return images


def _rank(seed: int, image: RealImage) -> bytes:
    return hashlib.blake2b(f"{seed}\0{image.label}\0{image.path.name}".encode(), digest_size=16).digest()


def split(images: Sequence[RealImage], holdout: float, seed: int) -> tuple[list[RealImage], list[RealImage]]:
    """(train, held_out): per label, round(n * holdout) images held out (at most n - 1, so every
    label keeps one for training), chosen by a blake2b hash of (seed, label, file name): the same in
    every process and independent of where the folder lies. Both lists keep the input order."""
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise FewShotError(None, f"holdout must be a fraction in [0, 1), got {holdout!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise FewShotError(None, f"seed must be an integer, got {seed!r}")
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        by_label[image.label].append(i)
    held: set[int] = set()
    for group in by_label.values():
        k = min(int(len(group) * holdout + 0.5), len(group) - 1)
        held.update(sorted(group, key=lambda i: _rank(seed, images[i]))[:k])
    return ([im for i, im in enumerate(images) if i not in held],
            [im for i, im in enumerate(images) if i in held])


def caption_of(image: RealImage, fallback: Callable[[str], str]) -> str:
    """The image's own caption (its ``.txt``), else ``fallback(label)``."""
    return image.caption if image.caption else fallback(image.label)
