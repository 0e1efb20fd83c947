"""V3 adapters: ``DTGenDatasetWriter`` and ``DTGenDatasetFinalize`` (ComfyUI only).

The writer stores what the filter decided (or plain images + labels) crash-safely under ComfyUI's
output folder; the logic is in writer.py, background.py, finalize.py, provenance.py and friends.
The writer hands images to the process's background writer (store/background.py) and returns while
they are encoded and written, when another prompt is queued (its GPU work then overlaps the
writing); with nothing queued after it, it waits until they are on disk, so a finished queue means
a complete dataset.
"""
from __future__ import annotations

import json
import os

import folder_paths
from comfy_api.latest import io, ui

from .comfy_types import (DatasetHandle, RealImagesType, ScoredBatchType, dataset_input, dataset_name_of,
                          real_anchor_inputs, threshold_inputs)
from . import comfy_paths
from ..common.items import items_from_lists
from ..common.lists import as_list, first
from ..common.naming import category, node_id
from ..common.records import ScoredBatch
from ..curation.real_anchor import BASES, DEFAULT_TOP_K

FORMATS = ("png", "jpeg", "webp")
EXPORT_CHOICES = ("auto", "none", "coco", "yolo", "coco,yolo")


def dataset_dir(name: str):
    """These nodes need a dataset: a blank name is an error."""
    return comfy_paths.dataset_dir(name, required=True)


def _hash_cache():
    from ..store.provenance import HashCache

    return HashCache(os.path.join(folder_paths.get_user_directory(), "dtgen", "model_hashes.json"))


def _another_prompt_queued() -> bool:
    """Whether ComfyUI's queue holds a prompt after the running one (then writing in the background
    overlaps its generation; otherwise there is nothing to overlap and the writer waits)."""
    try:
        from server import PromptServer

        return PromptServer.instance.prompt_queue.get_tasks_remaining() > 1   # the running one counts
    except Exception:   # no server (scripts, tests): wait for the files
        return False


def _resolve(folder: str, name: str):
    try:
        return folder_paths.get_full_path(folder, name)
    except KeyError:  # folder not registered in this ComfyUI
        return None


class DTGenDatasetWriter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("DatasetWriter"),
            display_name="DTGen Dataset Writer",
            category=category("dataset"),
            description=(
                "Writes a labelled dataset under ComfyUI's output folder, crash-safely: accepted images in "
                "<dataset>/images/<label>/ (loads with torchvision ImageFolder and datasets 'imagefolder'), "
                "rejected ones in <dataset>/rejected/<label>/, one manifest line per image with prompt, seed, "
                "score, threshold, decision, models and sampler settings. Rerunning an item never duplicates it."),
            is_input_list=True,
            is_output_node=True,
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],   # PNG text chunks, provenance
            inputs=[
                io.String.Input("dataset_name", default="dtgen_dataset",
                                tooltip="Dataset folder under ComfyUI's output directory (letters, digits, . _ -; "
                                        "'/' for sub-folders)."),
                ScoredBatchType.Input("scored", optional=True,
                                      tooltip="Scored batch from DTGen CLIP Filter (images, decisions, scores)."),
                io.Image.Input("images", optional=True,
                               tooltip="Plain images, for graphs without a filter (all stored as accepted)."),
                io.String.Input("label", force_input=True, optional=True,
                                tooltip="Class label per plain image (from DTGen Prompt Sampler)."),
                io.String.Input("positive", force_input=True, optional=True, tooltip="Prompt per plain image."),
                io.String.Input("negative", force_input=True, optional=True, tooltip="Negative prompt per plain image."),
                io.String.Input("metadata", force_input=True, optional=True,
                                tooltip="Metadata JSON per plain image (from DTGen Prompt Sampler)."),
                io.Int.Input("seed", force_input=True, optional=True, tooltip="Image seed per plain image."),
                io.Combo.Input("image_format", options=list(FORMATS), default="png", optional=True,
                               tooltip="File format. PNG carries the prompt and workflow in text chunks like SaveImage."),
                io.Int.Input("quality", default=95, min=1, max=100, optional=True,
                             tooltip="JPEG/WebP quality (1-100); ignored for PNG."),
                io.Int.Input("quota_per_class", default=0, min=0, max=10_000_000, optional=True,
                             tooltip="Target accepted images per class; accepted images past it are dropped (not "
                                     "stored, not even as rejected). 0 = no quota."),
                dataset_input(),
                RealImagesType.Input("real_images", optional=True,
                                     tooltip="Optional: your real photos from DTGen Few-Shot Images. They join the "
                                             "dataset as accepted images marked source: real (never filtered, "
                                             "stored once however often you queue)."),
                io.Boolean.Input("real_in_quota", default=False, optional=True,
                                 tooltip="Count the real images toward quota_per_class (and the sampler's resume "
                                         "quota). Off: quotas count generated images only."),
                io.Mask.Input("masks", optional=True,
                              tooltip="Optional instance masks, one entry per image in the order of the images (or "
                                      "of the filter's items): n x H x W, one mask per object (DTGen Copy-Paste's "
                                      "masks, a segmenter, an inpainting mask). Stored in <dataset>/masks/ with boxes "
                                      "in the manifest; Finalize exports COCO and YOLO labels."),
            ],
            outputs=[
                io.String.Output("dataset_path", display_name="dataset_path",
                                 tooltip="Absolute path of the dataset folder."),
                io.String.Output("status", display_name="status",
                                 tooltip="Per-class counts as JSON: accepted, rejected, target, missing."),
                DatasetHandle.Output("written_dataset", display_name="dataset",
                                     tooltip="This dataset, after this run's images are stored: wire it into DTGen "
                                             "Dataset Finalize to write and finalize in one queue run."),
            ],
        )

    @classmethod
    def validate_inputs(cls, dataset_name, image_format=None) -> bool | str:
        # (no input_types argument: naming it would switch off ComfyUI's link type checks here)
        from ..common.validation import check_choice, linked

        try:
            if not linked(first(image_format)):
                check_choice("image_format", first(image_format), FORMATS)
            name = first(dataset_name)
            if not linked(name) and (name or "").strip():   # blank: a wired dataset handle names it
                dataset_dir(name)
        except ValueError as exc:   # DatasetPathError is a ValueError
            return str(exc)
        return True

    @classmethod
    def fingerprint_inputs(cls, **_) -> float:
        # Always run (NaN never equals itself): ComfyUI replays a cached output node whose inputs
        # are unchanged, and the dataset may have changed on disk since (deleted, repaired), so a
        # replayed "written" summary could report writes that never happened. Re-running costs a
        # duplicate check per item; stored items are skipped and the summary says so.
        return float("nan")

    @classmethod
    def execute(cls, dataset_name, scored=None, images=None, label=None, positive=None, negative=None,
                metadata=None, seed=None, image_format=None, quality=None, quota_per_class=None,
                dataset=None, real_images=None, real_in_quota=None, masks=None) -> io.NodeOutput:
        from comfy.model_management import throw_exception_if_processing_interrupted

        from ..curation.real_images import import_real
        from ..store import background
        from ..store.provenance import model_files, sampler_settings
        from ..store.writer import png_text, quotas_for, summary
        from .train_checkpoint import lora_misfits

        items, real_emb, real_model = [], {}, None
        for batch in as_list(scored):
            items.extend(batch.items if isinstance(batch, ScoredBatch) else [])
            if isinstance(batch, ScoredBatch) and batch.config.get("real_embeddings"):   # the filter's real photos
                real_emb.update(batch.config["real_embeddings"])
                real_model = batch.config.get("real_model")
        if as_list(images):
            items.extend(items_from_lists(as_list(images), as_list(positive), as_list(label),
                                          as_list(metadata), as_list(negative), as_list(seed)))
        if as_list(masks):
            from ..common.instances import attach_masks

            attach_masks(items, as_list(masks))
        real_sets = [r for r in as_list(real_images) if r is not None]
        if not items and not real_sets:
            raise ValueError("DTGen Dataset Writer: nothing to write; connect 'scored' (from DTGen CLIP "
                             "Filter), 'images' + 'label', or 'real_images' (from DTGen Few-Shot Images)")
        prompt = cls.hidden.prompt
        misfits, lora_warnings = lora_misfits(prompt)
        if misfits:   # images made without their LoRA must not enter the dataset as if made with it
            raise ValueError("DTGen Dataset Writer: nothing written. " + " ".join(misfits))
        name = dataset_name_of(first(dataset), first(dataset_name))
        path = dataset_dir(name)
        bg = background.for_dataset(path)
        with bg.open(image_format=first(image_format, "png"), quality=first(quality, 95),
                     quotas=quotas_for(items, first(quota_per_class, 0))) as writer:
            result = bg.submit(writer, items, models=model_files(prompt, _resolve, _hash_cache()),
                               sampler_settings=sampler_settings(prompt),
                               png_text=png_text(prompt, cls.hidden.extra_pnginfo),
                               interrupted=throw_exception_if_processing_interrupted) if items else None
            real = [import_real(writer, r, bool(first(real_in_quota, False)), throw_exception_if_processing_interrupted,
                                embeddings=real_emb, clip_model=real_model) for r in real_sets]
            if not _another_prompt_queued():
                bg.flush(throw_exception_if_processing_interrupted)
            status = bg.status(writer)
        text = summary(path, result, status, bg.handed_over_count()) + "".join("\n" + r.line() for r in real)
        text += "".join(f"\nwarning: {w}" for w in lora_warnings)
        return io.NodeOutput(str(path), json.dumps(status, sort_keys=True), name.strip(), ui=ui.PreviewText(text))


class DTGenDatasetFinalize(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("DatasetFinalize"),
            display_name="DTGen Dataset Finalize",
            category=category("dataset"),
            description=(
                "Re-decides every stored image with the final population's per-class thresholds (moving files "
                "between images/ and rejected/ and updating the manifest atomically), adds an optional "
                "deterministic train/val/test split, and writes report/ (counts, histograms, contact sheets). Uses "
                "the threshold settings set here, not the ones the filter used. Run it in its own graph (or "
                "once at the end): it re-decides the whole dataset each time it runs."),
            is_output_node=True,
            inputs=[
                io.String.Input("dataset_name", default="dtgen_dataset",
                                tooltip="Dataset folder under ComfyUI's output directory."),
                io.Boolean.Input("redecide", default=True,
                                 tooltip="Re-apply the threshold to all stored scores (no re-encoding)."),
                *threshold_inputs(),
                io.String.Input("split", default="", optional=True,
                                tooltip="Optional train,val,test fractions, e.g. 0.8,0.1,0.1 (by hash of the image id: "
                                        "stable across reruns). Empty = no split."),
                io.Float.Input("class_margin", default=-1.0, min=-1.0, max=1.0, step=0.005, optional=True,
                               tooltip="If >= 0: re-run the class-margin check with this margin. -1 = keep the "
                                       "filter's class-margin rejections as they are."),
                io.Float.Input("near_duplicate", default=0.0, min=0.0, max=1.0, step=0.005, optional=True,
                               tooltip="If > 0: re-run the near-duplicate check at this cosine. 0 = keep the "
                                       "filter's near-duplicate rejections as they are."),
                io.Boolean.Input("split_folders", default=False, optional=True,
                                 tooltip="Also (re)build <dataset>/splits/train|val|test/<label>/ (hard links to the "
                                         "accepted images, copies where links are impossible; a metadata.jsonl per "
                                         "split) so ImageFolder or load_dataset can load one split. Uses the split "
                                         "above, or the one an earlier finalize recorded."),
                dataset_input(),
                io.Combo.Input("export", options=list(EXPORT_CHOICES), default="auto", optional=True,
                               tooltip="Labels for detection / segmentation from the stored instance masks: COCO "
                                       "annotations/instances[_<split>].json and/or YOLO labels/ + data.yaml. auto: "
                                       "both when any image has masks."),
                *real_anchor_inputs("recomputed from the stored embeddings against the dataset's real photos"),
            ],
            outputs=[
                io.String.Output("report", display_name="report",
                                 tooltip="Report as JSON: per-class counts and acceptance rate, moves, split."),
                io.Image.Output("plot", display_name="plot", tooltip="Per-class score histograms with thresholds."),
                DatasetHandle.Output("finalized_dataset", display_name="dataset",
                                     tooltip="This dataset, after Finalize: wire it into DTGen Evaluate to measure it "
                                             "in the same queue run."),
            ],
        )

    @classmethod
    def validate_inputs(cls, dataset_name, method, k, keep_percent, fixed_threshold, split="",
                        input_types=None, decide_on=None) -> bool | str:
        # only the inputs named here lose ComfyUI's own checks; each is checked below
        from ..common.validation import check_choice, linked
        from ..curation.thresholds import method_from
        from ..curation.finalize import parse_split
        from ..store.paths import DatasetPathError

        try:
            if not linked(method, k, keep_percent, fixed_threshold):
                method_from(method, k, keep_percent, fixed_threshold)
            if not linked(split) and split.strip():
                parse_split(split)
            if decide_on is not None and not linked(decide_on):
                check_choice("decide_on", decide_on, BASES)
            if linked(dataset_name) or "dataset" in (input_types or {}):
                return True   # a wired handle names the dataset (it may not exist before the writer runs)
            path = dataset_dir(dataset_name)
        except (DatasetPathError, ValueError) as exc:
            return str(exc)
        if not path.is_dir():
            return f"no dataset {dataset_name!r} at {path}"
        return True

    @classmethod
    def fingerprint_inputs(cls, dataset_name, **_) -> str:
        # a wired handle is not visible here; its own node's fingerprint carries the dataset's changes
        from ..store.reader import history_fingerprint

        try:
            return history_fingerprint(dataset_dir(dataset_name))
        except ValueError:   # a blank or bad typed name beside a wired handle
            return ""

    @classmethod
    def execute(cls, dataset_name, redecide, method, k, keep_percent, fixed_threshold, min_count,
                split="", class_margin=-1.0, near_duplicate=0.0, split_folders=False, dataset=None,
                export="auto", decide_on="text", real_top_k=DEFAULT_TOP_K) -> io.NodeOutput:
        import torch

        from ..curation.filtering import checks_from_widgets
        from ..curation.finalize import finalize, finalize_summary
        from ..curation.redecide import decide_fn_for, histogram_image
        from ..curation.thresholds import method_from

        decide_fn = None
        if redecide:
            margin, near = checks_from_widgets(class_margin, near_duplicate)
            decide_fn = decide_fn_for(method_from(method, k, keep_percent, fixed_threshold), min_count, margin, near,
                                      basis=decide_on or "text", real_top_k=int(real_top_k or DEFAULT_TOP_K))
        name = dataset_name_of(dataset, dataset_name)
        report = finalize(dataset_dir(name), decide_fn=decide_fn, split=split.strip() or None,
                          plot_fn=histogram_image, echo=False, split_folders=bool(split_folders),
                          export=None if export in (None, "auto") else export)
        image = torch.from_numpy(report.plot_image.astype("float32") / 255.0)[None]
        shown = ui.PreviewImage(image, cls=cls).as_dict()
        shown["text"] = (finalize_summary(report),)
        return io.NodeOutput(json.dumps(report.data, sort_keys=True), image, name.strip(), ui=shown)


class DTGenDataset(io.ComfyNode):
    """The dataset named once, for every node that uses it."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("Dataset"),
            display_name="DTGen Dataset",
            category=category("dataset"),
            description=("Names the dataset once: wire its output into the Prompt Sampler (resume mode), the CLIP "
                         "Filter (history), the Dataset Writer and Finalize; their typed dataset_name is then "
                         "not used. Nodes wired to it run again whenever the dataset changes."),
            inputs=[io.String.Input("dataset_name", default="dtgen_dataset",
                                    tooltip="Dataset folder under ComfyUI's output directory (letters, digits, . _ -; "
                                            "'/' for sub-folders).")],
            outputs=[DatasetHandle.Output("dataset", display_name="dataset",
                                          tooltip="The dataset, for the 'dataset' input of the other DTGen nodes.")],
        )

    @classmethod
    def validate_inputs(cls, dataset_name) -> bool | str:
        try:
            dataset_dir(dataset_name)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def fingerprint_inputs(cls, dataset_name) -> str:
        # what is stored decides what the sampler plans and what the filter compares with
        from ..store.reader import history_fingerprint

        return history_fingerprint(dataset_dir(dataset_name))

    @classmethod
    def execute(cls, dataset_name) -> io.NodeOutput:
        dataset_dir(dataset_name)
        return io.NodeOutput(dataset_name.strip())


NODES = [DTGenDatasetWriter, DTGenDatasetFinalize, DTGenDataset]
