"""``evaluate``: the one entry point of the evaluation (the node and ``python -m runner evaluate``).

Does a dataset make a better classifier than the few real images alone? For each arm (``arms``),
a linear probe (``probe``) is trained on the CLIP image features of its images and measured on a
labelled test set; optionally the threshold sweep (``sweep``) re-decides the stored scores under a
grid of settings, chooses the best on a validation part of the test photos and reports it on the
held-out rest (``validation``). A test photo that is also a few-shot training image (same decoded
pixels, or a near-duplicate embedding: ``leakage``) is refused, naming it and the rule. The dataset
is only read, except for ``report/evaluation.json`` and ``report/confusion_<arm>.png``, written
atomically once everything is computed (an error writes nothing).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..store import background
from ..store.fsio import write_bytes_atomic
from ..store.layout import REPORT, now_iso, open_dataset
from ..store.reader import live_records
from . import leakage
from . import metrics as M
from .arms import SYNTHETIC, FewShot, build_arms
from .errors import EvaluationError
from .features import Encode, FeatureSource
from .finetune import FinetuneOptions, FinetuneResult
from .finetune import finetune as run_finetune
from .plots import confusion_image, save_png, side_by_side
from .probe import LinearProbe
from .sweep import Setting, SweepResult, check_sweep, default_grid, run_sweep
from .testset import TestSet, load_test_set

REPORT_JSON = "evaluation.json"
FORMAT = "dtgen-evaluation"


@dataclass
class ArmResult:
    name: str                  # fewshot | synthetic | synthetic_fewshot | <source>
    title: str
    n_train: int
    train_counts: dict         # {class: training images}
    metrics: M.Metrics
    probe: dict                # the probe's fit info (iterations, converged, seconds)
    finetune: FinetuneResult | None = None    # with ``finetune`` options only

    def as_dict(self) -> dict:
        return {"title": self.title, "n_train": self.n_train, "train_counts": dict(self.train_counts),
                **self.metrics.as_dict(), "probe": dict(self.probe),
                "finetune": None if self.finetune is None else self.finetune.as_dict()}


@dataclass
class EvaluationReport:
    dataset_dir: Path
    classes: tuple
    test: dict                         # where the test set came from, images per class
    arms: list                         # ArmResult, in table order
    table: str                         # arm | n train | accuracy | macro-F1 | per-class recall
    plots: dict                        # {arm name: H x W x 3 float32 confusion matrix}
    sweep: SweepResult | None = None
    notes: list = field(default_factory=list)
    features: dict = field(default_factory=dict)
    overlap: dict = field(default_factory=dict)
    seed: int = 0
    probe_settings: dict = field(default_factory=dict)
    seconds: float = 0.0
    report_json: Path | None = None    # None when not written
    plot_files: dict = field(default_factory=dict)
    leakage: dict = field(default_factory=dict)   # the content check of test vs few-shot images
    fidelity: dict = field(default_factory=dict)   # per class: curation.fidelity.class_fidelity (synthetic vs few-shot)

    @property
    def metrics(self) -> dict:
        """{arm name: metrics dict (accuracy, macro_f1, recall, precision, f1, confusion, ...)}."""
        return {a.name: a.metrics.as_dict() for a in self.arms}

    @property
    def best(self) -> dict | None:
        """The sweep's best setting (chosen on the validation photos) with its held-out numbers, the
        split and the held-out comparison with as stored (``apply``: may apply_best act, and why
        (not)); None without a sweep."""
        if self.sweep is None or self.sweep.best is None:
            return None
        return {**self.sweep.best.as_dict(), "split": dict(self.sweep.split), **self.sweep.comparison()}

    def preview(self) -> np.ndarray:
        """Every arm's confusion matrix in one image (H x W x 3 float32), for a preview."""
        return side_by_side(list(self.plots.values()))

    def finetune_table(self) -> str | None:
        """The arms' fine-tune numbers in the table's shape, or None without a fine-tune."""
        rows = [(a.title, a.n_train, a.finetune.metrics) for a in self.arms if a.finetune is not None]
        return M.format_table(rows) if rows else None

    def text(self) -> str:
        """What the node shows and the CLI prints: the table, the sweep, the notes."""
        counts = ", ".join(f"{c} {n}" for c, n in self.test["counts"].items())
        lines = [f"test set: {self.test['where']}: {sum(self.test['counts'].values())} images ({counts})",
                 f"classes in the dataset too: {len(self.overlap.get('common', []))} of {len(self.classes)}",
                 "", "linear probe on image embeddings:", self.table]
        ft = self.finetune_table()
        if ft is not None:
            first = next(a.finetune for a in self.arms if a.finetune is not None)
            runs = "/".join(str(e) for e in first.runs)
            lines += ["", f"fine-tuned ResNet18 ({first.init}, best of {runs} epochs on {first.device}):", ft]
        if self.sweep is not None:
            sw = self.sweep
            lines += ["", "threshold sweep (synthetic" + (" + few-shot" if sw.with_fewshot else "")
                      + ", linear probe): chosen on the validation photos (* = best, val. macro-F1), reported on "
                      "the held-out photos (accuracy, macro-F1, recall)", f"photos: {sw.split_text()}", sw.table()]
            if sw.best is not None:
                b = sw.best
                lines.append(f"best on validation: {b.setting.name} (val. macro-F1 {b.validation.macro_f1:.3f}, "
                             f"{b.changes} decisions changed); held-out accuracy {100 * b.metrics.accuracy:.1f} %")
                lines.append(("apply_best would re-decide the dataset: " if sw.apply else
                              "apply_best would change nothing: ") + sw.apply_reason)
        f = self.features
        lines += ["", (f"features: {f.get('dim')}-d image embeddings; {f.get('stored', 0)} stored, "
                       f"{f.get('encoded_records', 0)} dataset images and {f.get('encoded_files', 0)} other images "
                       "encoded")]
        if self.leakage:
            lk = self.leakage
            lines.append(f"leakage check: {lk['test']} test photos vs {lk['fewshot']} few-shot images by decoded "
                         f"pixels and {lk['rule_embedding']}: none found")
        if self.fidelity:
            from ..curation.fidelity import fidelity_line

            lines += ["", "synthetic vs few-shot real images per class (CLIP space, k-NN precision/recall, "
                          "density/coverage, Vendi):"]
            lines += [fidelity_line(c, fig) for c, fig in self.fidelity.items()]
        lines += [f"note: {n}" for n in self.notes]
        if self.report_json is not None:
            lines.append(f"report: {self.report_json}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"format": FORMAT, "version": 1, "created": now_iso(), "dataset": str(self.dataset_dir),
                "classes": list(self.classes), "test": self.test, "overlap": self.overlap, "seed": self.seed,
                "features": self.features, "probe": {"model": "multinomial logistic regression (L2, standardised "
                                                     "features, L-BFGS)", **self.probe_settings},
                "arms": {a.name: a.as_dict() for a in self.arms},
                "table": self.table, "sweep": None if self.sweep is None else self.sweep.as_dict(),
                "best": self.best, "leakage": dict(self.leakage), "notes": list(self.notes), "seconds": self.seconds,
                "fidelity": self.fidelity,
                "confusion_plots": {k: str(v) for k, v in self.plot_files.items()}}


def evaluate(dataset_dir, test_set, encode: Encode, fewshot=None, sweep: bool = False, seed: int = 0, *,
             classes: Sequence[str] | None = None, image_size: int | None = None, batch_size: int = 32,
             use_stored: bool = True, grid: Sequence[Setting] | None = None, sweep_with_fewshot: bool = False,
             probe_c: float = 1.0, probe_max_seconds: float = 120.0, finetune: FinetuneOptions | None = None,
             write_report: bool = True, validation_fraction: float = 0.5, n_boot: int = 2000,
             leak_cosine: float = leakage.NEAR_DUPLICATE_COSINE,
             check_interrupt: Callable[[], None] = lambda: None,
             progress: Callable[[int, int], None] | None = None) -> EvaluationReport:
    """Train a linear probe per arm and measure it on ``test_set``.

    dataset_dir: a DTGen dataset folder (only read; the report goes to ``report/``).
    test_set: an ImageFolder path ``<root>/<label>/*`` or a ``RealSet`` (e.g. its held_out part);
        its labels are the classes (or ``classes``, each of which needs a test image).
    encode: ``list of H x W x 3 float32 [0, 1] -> [n, D]`` image features, e.g.
        ``features.clip_encoder(bundle)``; stored embeddings are used when they match it.
    image_size: the square side images are loaded at (default ``encode.image_size``, else 224).
    fewshot: the real training images: None (the dataset's ``source: real`` records), a folder, a
        ``RealSet`` or a list of ``RealImage``.
    sweep: also run the threshold sweep over ``grid`` (default ``sweep.default_grid()``), trained on
        the synthetic images (+ the few-shot ones with ``sweep_with_fewshot``); the best setting is
        chosen on ``validation_fraction`` of the test photos (per class, seeded) and reported on the
        rest, with a bootstrap interval (``n_boot`` resamples) of its accuracy difference to as stored.
    seed: the probe is deterministic (convex, zero start); seeds the sweep's split and bootstrap and
        the fine-tune.
    leak_cosine: a test photo whose embedding has at least this cosine with a few-shot image's is
        refused as a near-duplicate (above 1: that rule off; same decoded pixels are always refused).
    finetune: also fine-tune a ResNet18 per arm (``finetune.FinetuneOptions``; slow without a GPU).
    Raises ``EvaluationError`` (a ValueError) on bad input, ``DatasetError`` for a folder that is not
    a dataset.
    """
    start = time.perf_counter()
    dataset_dir = Path(dataset_dir)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise EvaluationError(None, f"seed must be an integer, got {seed!r}")
    if not dataset_dir.is_dir():
        raise EvaluationError(dataset_dir, "no such dataset folder" if not dataset_dir.exists() else "is not a folder")
    background.flush(dataset_dir, check_interrupt)       # this process's items still being written
    open_dataset(dataset_dir, create=False)              # a DTGen dataset, no symlinks where we write
    if finetune is not None and finetune.weights and not Path(finetune.weights).expanduser().is_file():
        raise EvaluationError(finetune.weights, "ResNet18 weights file does not exist")
    if isinstance(leak_cosine, bool) or not isinstance(leak_cosine, (int, float)) or not 0.5 <= leak_cosine <= 1.01:
        raise EvaluationError(None, f"leak_cosine must be a number in 0.5..1.01 (above 1: the embedding rule off), "
                              f"got {leak_cosine!r}")
    test = load_test_set(test_set, classes)
    data = build_arms(dataset_dir, test, live_records(dataset_dir), fewshot)
    if sweep:                                            # refused now, not after the arms' work
        check_sweep(data.synthetic, test.classes, grid, data.fewshot, sweep_with_fewshot, test.labels(),
                    validation_fraction)
    notes = list(test.notes) + data.notes
    if image_size is None:
        image_size = int(getattr(encode, "image_size", 224))
    source = FeatureSource(dataset_dir, encode, image_size=image_size, batch_size=batch_size,
                           use_stored=use_stored, check_interrupt=check_interrupt)
    n_settings = 0 if not sweep else len(default_grid() if grid is None else grid)
    total, done = 1 + len(data.arms) + n_settings, 0

    def step():
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    test_x, test_y = source.for_files(test.paths), test.labels()
    leak_report = _check_leaks(dataset_dir, test, test_x, data.fewshot, source, float(leak_cosine))
    step()
    make_probe = lambda: LinearProbe(c=probe_c, max_seconds=probe_max_seconds, seed=seed)
    results, plots = [], {}
    for arm in data.arms:
        check_interrupt()
        probe = make_probe().fit(arm.features(source), arm.labels)
        if not probe.info.get("converged", True):
            notes.append(f"arm {arm.title!r}: the probe stopped after {probe.info['n_iter']} iterations / "
                         f"{probe.info['seconds']} s before converging")
        met = M.compute(test_y, probe.predict(test_x), test.classes)
        tuned = None
        if finetune is not None:
            tuned = run_finetune([dataset_dir / r["file"] for r in arm.records] + list(arm.files), arm.labels,
                                 test.paths, test_y, test.classes, replace(finetune, seed=seed),
                                 check_interrupt=check_interrupt)
        results.append(ArmResult(arm.name, arm.title, arm.n, arm.counts(test.classes), met, dict(probe.info), tuned))
        plots[arm.name] = confusion_image(met.confusion, test.classes,
                                          f"{arm.title}: accuracy {100 * met.accuracy:.1f} %, macro-F1 {met.macro_f1:.3f}")
        step()
    sweep_result = None
    if sweep:
        sweep_result = run_sweep(data.synthetic, test.classes, source, test_x, test_y, grid=grid,
                                 fewshot=data.fewshot, with_fewshot=sweep_with_fewshot, probe=make_probe,
                                 check_interrupt=check_interrupt, progress=step,
                                 validation_fraction=validation_fraction, seed=seed, n_boot=n_boot)
    notes += source.notes
    if finetune is not None and not finetune.weights:
        notes.append("fine-tune from a random init (no ResNet18 weights file given): far below a pretrained start")
    if source.counts["encoded_records"] and not source.counts["stored"] and not source.notes:
        notes.append("no stored embedding used: the dataset images were encoded from their files")
    table = M.format_table([(r.title, r.n_train, r.metrics) for r in results])
    report = EvaluationReport(dataset_dir, test.classes, {"where": test.where, "counts": test.counts()}, results,
                              table, plots, sweep_result, notes, source.describe(), data.overlap, seed,
                              {"c": probe_c, "max_seconds": probe_max_seconds}, leakage=leak_report)
    report.fidelity = _fidelity(data, source, test.classes)
    report.seconds = round(time.perf_counter() - start, 3)
    if write_report:
        _write(report)
    return report


def _check_leaks(dataset_dir: Path, test: TestSet, test_x: np.ndarray, few: FewShot | None, source: FeatureSource,
                 min_cosine: float) -> dict:
    """Refuse a test photo that is a few-shot training image by content (``leakage``: the same
    decoded pixels, or embeddings with cosine >= ``min_cosine``), naming each and the rule; the
    check's description for the report when none is."""
    rule = (f"centred embedding cosine >= {min_cosine:g}" if min_cosine <= 1.0
            else "no embedding rule (leak_cosine > 1)")
    out = {"test": len(test.images), "fewshot": 0 if few is None else len(few.labels), "rule_pixels":
           f"same decoded pixels at {leakage.KEY_SIZE} px", "rule_embedding": rule, "found": []}
    if few is None or not len(few.labels):
        return out
    paths = few.paths(dataset_dir)
    keys = {}
    for what, files in (("test set", test.paths), ("few-shot images", paths)):
        for p in files:
            try:
                keys[p] = leakage.pixel_key(p)
            except ValueError as e:             # FewShotError: names the file
                raise EvaluationError(p, f"{what}: image cannot be used: {str(e).removeprefix(f'{p}: ')}") from None
    parts = [source.for_records(few.records)] if few.records else []
    if few.files:
        parts.append(source.for_files(few.files))
    few_x = np.concatenate(parts)
    found = leakage.find_leaks([str(p) for p in test.paths], few.names(), [keys[p] for p in test.paths],
                               [keys[p] for p in paths], test_x, few_x, min_cosine if min_cosine <= 1.0 else 2.0)
    if found:
        raise EvaluationError(Path(found[0].test), leakage.leak_message(found))
    return out


def _fidelity(data, source: FeatureSource, classes) -> dict:
    """Per class, the synthetic arm's images against the few-shot real images (features already
    computed for the arms: nothing is encoded again); {} without one of the two."""
    from ..curation.fidelity import class_fidelity

    synthetic = next((a for a in data.arms if a.name == SYNTHETIC), None)
    if synthetic is None or not synthetic.n or data.fewshot is None:
        return {}
    few = data.fewshot
    parts = ([source.for_records(few.records)] if few.records else []) + ([source.for_files(few.files)] if few.files else [])
    real_x, syn_x = np.concatenate(parts), synthetic.features(source)
    return {c: class_fidelity(real_x[few.labels == i], syn_x[synthetic.labels == i]) for i, c in enumerate(classes)}


def _write(report: EvaluationReport) -> None:
    out = report.dataset_dir / REPORT
    out.mkdir(exist_ok=True)
    files = {name: save_png(img, out / f"confusion_{name}.png") for name, img in report.plots.items()}
    for old in out.glob("confusion_*.png"):       # arms of an earlier evaluation that are gone now
        if old not in files.values() and old.is_file() and not old.is_symlink():
            old.unlink()
    report.plot_files = files
    report.report_json = out / REPORT_JSON
    write_bytes_atomic(report.report_json,
                       (json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
