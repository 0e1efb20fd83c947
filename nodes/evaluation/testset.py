"""The labelled images an evaluation measures on (the test set) and the few-shot real images it may
train on, from an ImageFolder ``<root>/<label>/*`` (``fewshot.imageset.scan``) or a ``RealSet``.

The class names of an evaluation are the test set's labels. With a ``RealSet`` (e.g. the
``held_out`` part of a holdout split) they are the labels of its whole folder, so a class whose part
holds no image is found and refused by name, as is any class of an explicit ``classes`` list without
a test image.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fewshot.imageset import FewShotError, RealImage, scan
from ..fewshot.realset import RealSet
from .errors import EvaluationError

MAX_FILES = 100_000


@dataclass(frozen=True)
class TestSet:
    __test__ = False                 # not a pytest test class

    classes: tuple                   # class names, in this order everywhere (metrics, plots, table)
    images: tuple                    # RealImage, each of a class in ``classes``
    where: str                       # what it was made from, for the report
    notes: tuple = ()

    @property
    def paths(self) -> list[Path]:
        return [im.path for im in self.images]

    def labels(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[im.label] for im in self.images], dtype=np.int64)

    def counts(self) -> dict[str, int]:
        found = Counter(im.label for im in self.images)
        return {c: found[c] for c in self.classes}


def real_images(spec, what: str = "images") -> tuple[list[RealImage], str, list[str]]:
    """(images, description, folder labels) of a folder path, a ``RealSet`` or a list of ``RealImage``."""
    try:
        if isinstance(spec, RealSet):
            try:
                labels = sorted({im.label for im in scan(spec.root, max_files=MAX_FILES)})
            except FewShotError:          # the folder changed since: the set's own labels
                labels = sorted(set(spec.labels))
            part = "all images" if spec.part == "all" else f"part {spec.part} of a {spec.holdout:g} holdout split (seed {spec.seed})"
            return list(spec.images), f"{spec.root} ({part})", labels
        if isinstance(spec, (str, Path)):
            images = scan(Path(spec).expanduser(), max_files=MAX_FILES)
            return images, str(spec), sorted({im.label for im in images})
        images = list(spec)
    except FewShotError as e:
        raise EvaluationError(None, f"{what}: {e}") from None
    if not all(isinstance(im, RealImage) for im in images):
        raise EvaluationError(None, f"{what}: expected a folder, a RealSet or a list of RealImage, got "
                              f"{type(spec).__name__}")
    return images, f"{len(images)} listed images", sorted({im.label for im in images})


def load_test_set(spec, classes: Sequence[str] | None = None) -> TestSet:
    """The test images of ``spec`` (a folder path or a ``RealSet``), their classes checked."""
    images, where, labels = real_images(spec, "test set")
    notes = []
    if classes is not None:
        classes = list(dict.fromkeys(classes))
        if not classes:
            raise EvaluationError(None, "classes: empty list; give the class names to evaluate, or None for the test set's")
        dropped = sorted(set(labels) - set(classes))
        if dropped:
            notes.append(f"test classes not in the chosen classes, left out: {', '.join(dropped)}")
    else:
        classes = labels
    images = [im for im in images if im.label in set(classes)]
    have = Counter(im.label for im in images)
    empty = [c for c in classes if not have[c]]
    if empty:
        raise EvaluationError(None, f"test set {where}: class{'es' if len(empty) > 1 else ''} "
                              f"{', '.join(repr(c) for c in empty)} ha{'ve' if len(empty) > 1 else 's'} no test image; "
                              "add images (or raise the holdout) or leave the class out")
    return TestSet(tuple(classes), tuple(images), where, tuple(notes))
