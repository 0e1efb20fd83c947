"""The training sets ("arms") an evaluation compares, from a dataset folder and real images.

- ``fewshot``: the real training images only: the dataset's ``source: real`` records, or the
  images given as ``fewshot`` (a folder, a ``RealSet`` or a list of ``RealImage``);
- ``synthetic``: every accepted image that is not real (the hybrid when there are several sources);
- ``synthetic_fewshot``: both;
- one arm per synthetic source (``generated`` = Stable Diffusion, ``copy_paste``, ...), only when
  the dataset holds more than one.

Records and images are matched to the test set's classes by label (or a record's ``label_dir``).
Dataset labels the test set lacks are left out with a note; no class in common is refused. An arm
that would be empty is left out with a note. ``Arm.features(FeatureSource)`` gives its features.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common.records import GENERATED
from ..store.reader import source_of
from .errors import EvaluationError
from .features import FeatureSource
from .testset import TestSet, real_images

FEWSHOT, SYNTHETIC, BOTH = "fewshot", "synthetic", "synthetic_fewshot"
REAL = "real"
SOURCE_TITLES = {GENERATED: "generated (SD)", "copy_paste": "copy-paste"}
SOURCE_NAMES = {"copy_paste": "copy-paste"}          # in the hybrid's title


@dataclass
class Arm:
    name: str                        # id: fewshot | synthetic | synthetic_fewshot | <source>
    title: str                       # for the table
    records: list = field(default_factory=list)   # dataset records (dicts)
    files: list = field(default_factory=list)     # few-shot image files outside the dataset (Path)
    labels: np.ndarray = None        # class index per row: records first, then files

    @property
    def n(self) -> int:
        return len(self.records) + len(self.files)

    def counts(self, classes: Sequence[str]) -> dict[str, int]:
        found = np.bincount(self.labels, minlength=len(classes)) if self.n else np.zeros(len(classes), int)
        return {c: int(v) for c, v in zip(classes, found)}

    def features(self, source: FeatureSource) -> np.ndarray:
        parts = [source.for_records(self.records)] if self.records else []
        if self.files:
            parts.append(source.for_files(self.files))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


@dataclass
class FewShot:
    """The real training images: dataset records or files, each with its class index."""
    records: list
    files: list
    labels: np.ndarray               # records first, then files
    where: str

    def names(self) -> list[str]:
        """What each image is, for the leakage report: records first, then files."""
        return [f"dataset image {r['file']}" for r in self.records] + [f"few-shot image {p}" for p in self.files]

    def paths(self, dataset_dir) -> list[Path]:
        """The image files, records first (in ``dataset_dir``), then files."""
        return [Path(dataset_dir) / r["file"] for r in self.records] + [Path(p) for p in self.files]


@dataclass
class TrainingData:
    classes: tuple
    synthetic: list                  # every live non-real record of a test class (any decision), for the sweep
    fewshot: FewShot | None
    arms: list                       # Arm, in table order
    overlap: dict                    # dataset labels, test classes, common
    notes: list


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "source"


def class_of(rec: dict, classes: set) -> str | None:
    """The test class of a record: its label, else its folder name, else None."""
    if rec.get("label") in classes:
        return rec["label"]
    if rec.get("label_dir") in classes:
        return rec["label_dir"]
    return None


def _index(names, classes) -> np.ndarray:
    pos = {c: i for i, c in enumerate(classes)}
    return np.array([pos[n] for n in names], dtype=np.int64)


def make_arm(name: str, title: str, records: list, files: list, classes, record_class, file_labels) -> Arm:
    labels = np.concatenate([_index([record_class[r["id"]] for r in records], classes),
                             _index(file_labels, classes)]).astype(np.int64)
    return Arm(name, title, list(records), list(files), labels)


def build_arms(dataset_dir, test: TestSet, records: list[dict], fewshot=None) -> TrainingData:
    """The arms for ``test``'s classes from the dataset's live ``records`` (``reader.live_records``).

    ``fewshot``: None (the dataset's real records) or the real training images (folder, ``RealSet``,
    list of ``RealImage``), which then replace the dataset's real records in the few-shot arms."""
    classes = tuple(test.classes)
    cset = set(classes)
    notes: list[str] = []
    if not records:
        raise EvaluationError(dataset_dir, "the dataset holds no image to train on")
    record_class = {r["id"]: class_of(r, cset) for r in records}
    dataset_labels = sorted({r["label"] for r in records})
    common = [c for c in classes if any(v == c for v in record_class.values())]
    overlap = {"dataset_labels": dataset_labels, "test_classes": list(classes), "common": common}
    if not common:
        raise EvaluationError(dataset_dir, f"no class in common between the dataset ({', '.join(dataset_labels)}) "
                              f"and the test set ({', '.join(classes)}); the test folders must be named like the "
                              "dataset's labels")
    left_out = sorted({r["label"] for r in records if record_class[r["id"]] is None})
    for label in left_out:
        n = sum(1 for r in records if r["label"] == label and r["decision"] == "accepted")
        notes.append(f"dataset class {label!r} ({n} accepted images) is not in the test set: left out")
    for c in classes:
        if c not in common:
            notes.append(f"test class {c!r} has no image in the dataset: the dataset's arms never predict it")

    mapped = [r for r in records if record_class[r["id"]] is not None]
    synthetic_all = [r for r in mapped if source_of(r) != REAL]
    accepted = [r for r in synthetic_all if r["decision"] == "accepted"]
    few = _fewshot(dataset_dir, mapped, classes, record_class, fewshot, notes)

    arms: list[Arm] = []
    few_files_labels = [] if few is None else [classes[i] for i in few.labels[len(few.records):]]
    if few is not None and few.labels.size:
        arms.append(make_arm(FEWSHOT, "few-shot real", few.records, few.files, classes, record_class, few_files_labels))
    sources = sorted({source_of(r) for r in accepted})
    if len(sources) > 1:
        for src in sources:
            chosen = [r for r in accepted if source_of(r) == src]
            arms.append(make_arm(slug(src), SOURCE_TITLES.get(src, src), chosen, [], classes, record_class, []))
    if accepted:
        title = "synthetic" if len(sources) <= 1 else "hybrid (" + " + ".join(SOURCE_NAMES.get(s, s) for s in sources) + ")"
        arms.append(make_arm(SYNTHETIC, title, accepted, [], classes, record_class, []))
        if few is not None and few.labels.size:
            arms.append(make_arm(BOTH, f"{title} + few-shot", accepted + few.records, few.files, classes,
                                 record_class, few_files_labels))
    else:
        notes.append("no accepted synthetic image of a test class: no synthetic arm")
    for arm in arms:
        missing = [c for c, n in arm.counts(classes).items() if n == 0]
        if missing:
            notes.append(f"arm {arm.title!r} has no training image of {', '.join(missing)}: it never predicts "
                         f"{'them' if len(missing) > 1 else 'it'}")
    return TrainingData(classes, synthetic_all, few, arms, overlap, notes)


def _fewshot(dataset_dir, mapped, classes, record_class, spec, notes) -> FewShot | None:
    cset = set(classes)
    if spec is None:
        reals = [r for r in mapped if source_of(r) == REAL]
        if not reals:
            notes.append("no real images in the dataset and none given: no few-shot arms")
            return None
        labels = np.array([classes.index(record_class[r["id"]]) for r in reals], dtype=np.int64)
        return FewShot(reals, [], labels, f"{len(reals)} real images in the dataset")
    images, where, _ = real_images(spec, "few-shot images")
    reals = sum(1 for r in mapped if source_of(r) == REAL)
    if reals:
        notes.append(f"the dataset's {reals} real images are not used: the given few-shot images replace them")
    dropped = sorted({im.label for im in images if im.label not in cset})
    if dropped:
        notes.append(f"few-shot classes not in the test set, left out: {', '.join(dropped)}")
    images = [im for im in images if im.label in cset]
    if not images:
        notes.append(f"no few-shot image of a test class in {where}: no few-shot arms")
        return None
    labels = np.array([classes.index(im.label) for im in images], dtype=np.int64)
    return FewShot([], [Path(im.path) for im in images], labels, where)
