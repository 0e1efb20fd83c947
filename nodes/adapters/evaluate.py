"""V3 adapter: ``DTGenEvaluate`` (ComfyUI only; the logic is in nodes/evaluation/): did the
synthetic data help? A linear probe on CLIP image features per training arm (few-shot real,
synthetic, both, per source), tested on real images; optionally the threshold sweep."""
from __future__ import annotations

import json

from comfy_api.latest import io, ui

from .comfy_paths import dataset_dir, folder_sets, resolve_set
from .comfy_types import DtgenClip, RealImagesType, dataset_input, dataset_name_of
from .fewshot_images import FEWSHOT_FOLDER
from .off_loop import off_loop
from ..common.naming import category, node_id

NO_FOLDER = "none (wire test_images)"


def _test_folder(name: str) -> str:
    from ..evaluation.errors import EvaluationError

    return resolve_set(FEWSHOT_FOLDER, name, "real test set", EvaluationError)


def apply_best_setting(path, best: dict, min_count: int = 8):
    """Re-decide the dataset with the sweep's best setting when the sweep allows it
    (``evaluation.sweep.apply_best``): (Finalize's report or None, the line saying what was done)."""
    from ..evaluation.sweep import apply_best

    return apply_best(path, best, min_count=min_count)


class DTGenEvaluate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        folders = [NO_FOLDER, *folder_sets(FEWSHOT_FOLDER)]
        return io.Schema(
            node_id=node_id("Evaluate"),
            display_name="DTGen Evaluate",
            category=category("evaluation"),
            description=(
                "Did the synthetic data help? Trains a linear probe on CLIP image features for each arm - few-shot "
                "real only, synthetic only, synthetic + few-shot, and per source (SD, copy-paste) where the dataset "
                "has several - and tests it on real images: accuracy, macro-F1, per-class recall and a confusion "
                "matrix per arm. With sweep, re-decides the stored scores under several threshold settings and "
                "reports which gives the best classifier: chosen on a validation part of the test photos, reported "
                "on the held-out rest with a bootstrap interval of its gain over the stored decisions. A test photo "
                "that is also a few-shot image (same pixels or near-duplicate embedding) is refused. Writes only "
                "<dataset>/report/evaluation.json and confusion plots."),
            is_output_node=True,
            inputs=[
                io.String.Input("dataset_name", default="dtgen_dataset",
                                tooltip="Dataset folder under ComfyUI's output directory."),
                DtgenClip.Input("clip", tooltip="The CLIP model whose image features the probes use (the filter's: "
                                                 "stored embeddings are reused when they match it)."),
                io.Combo.Input("test_folder", options=folders, default=NO_FOLDER,
                               tooltip="Real labelled test images: an ImageFolder set (<label>/*.jpg) in "
                                       "models/dtgen_fewshot or input/<name>. Or wire test_images."),
                io.Boolean.Input("sweep", default=False,
                                 tooltip="Also evaluate threshold settings (mean_std k 0.5-2, median_mad, percentile) "
                                         "on the stored scores: the best is chosen on a validation part of the test "
                                         "photos and reported on the held-out rest."),
                io.Boolean.Input("apply_best", default=False,
                                 tooltip="With sweep: re-decide the dataset with the best setting (moves files "
                                         "between images/ and rejected/, like Finalize), only when its held-out "
                                         "accuracy gain over the stored decisions is above its 95 % bootstrap "
                                         "interval's uncertainty (lower bound > 0); else the text says why not."),
                io.Int.Input("seed", default=0, min=0, max=2 ** 31 - 1,
                             tooltip="Seeds the sweep's validation / held-out split and its bootstrap; recorded."),
                RealImagesType.Input("test_images", optional=True,
                                     tooltip="Real test images from DTGen Few-Shot Images (part held_out): replaces "
                                             "test_folder."),
                RealImagesType.Input("fewshot_images", optional=True,
                                     tooltip="The real training images (DTGen Few-Shot Images, part train). "
                                             "Default: the dataset's own real images (source: real)."),
                dataset_input(),
                io.Float.Input("validation_percent", default=50.0, min=10.0, max=90.0, step=5.0, optional=True,
                               tooltip="With sweep: the share of each class's test photos the best setting is "
                                       "chosen on; the rest (held out from the choice) report it."),
                io.Float.Input("leak_cosine", default=0.99, min=0.5, max=1.01, step=0.001, optional=True,
                               tooltip="A test photo whose CLIP embedding has at least this cosine with a few-shot "
                                       "image's (both centred on their common mean) is refused as a near-duplicate "
                                       "(same decoded pixels always are); above 1 turns the embedding rule off."),
            ],
            outputs=[
                io.String.Output("table", display_name="table",
                                 tooltip="The results table: arm | n train | accuracy | macro-F1 | per-class recall."),
                io.Image.Output("confusion", display_name="confusion",
                                tooltip="Every arm's confusion matrix, for a Preview Image."),
                io.String.Output("best", display_name="best",
                                 tooltip="The sweep's best setting as JSON (method, params, held-out numbers, split, "
                                         "interval, apply and why); empty without a sweep."),
            ],
        )

    @classmethod
    async def validate_inputs(cls, test_folder) -> bool | str:
        return await off_loop(_check_test_folder, test_folder)   # scans the test folder

    @classmethod
    def fingerprint_inputs(cls, **_) -> float:
        return float("nan")   # the dataset changes on disk between runs: always measure again

    @classmethod
    def execute(cls, dataset_name, clip, test_folder, sweep, apply_best, seed, test_images=None, fewshot_images=None,
                dataset=None, validation_percent=50.0, leak_cosine=0.99) -> io.NodeOutput:
        import torch
        from comfy.model_management import throw_exception_if_processing_interrupted
        from comfy.utils import ProgressBar

        from ..evaluation.errors import EvaluationError
        from ..evaluation.features import clip_encoder
        from ..evaluation.report import evaluate

        if test_images is None and test_folder == NO_FOLDER:
            raise EvaluationError(None, "no test images: choose a test_folder or wire test_images (DTGen Few-Shot "
                                        "Images, part held_out)")
        path = dataset_dir(dataset_name_of(dataset, dataset_name), required=True)
        bar = ProgressBar(100)
        report = evaluate(path, test_images if test_images is not None else _test_folder(test_folder),
                          clip_encoder(clip.ready()), fewshot=fewshot_images, sweep=bool(sweep), seed=int(seed),
                          validation_fraction=float(validation_percent) / 100.0, leak_cosine=float(leak_cosine),
                          check_interrupt=throw_exception_if_processing_interrupted,
                          progress=lambda done, total: bar.update_absolute(done, max(total, 1)))
        text = report.text()
        best = report.best
        if best and apply_best:
            text += "\n" + apply_best_setting(path, best)[1]
        image = torch.from_numpy(report.preview().astype("float32"))[None]
        return io.NodeOutput(report.table, image, json.dumps(best, sort_keys=True) if best else "",
                             ui=ui.PreviewText(text))


def _check_test_folder(test_folder) -> bool | str:
    from ..evaluation.errors import EvaluationError

    if test_folder is not None and test_folder != NO_FOLDER:
        try:
            _test_folder(test_folder)
        except EvaluationError as exc:
            return str(exc)
    return True


NODES = [DTGenEvaluate]
