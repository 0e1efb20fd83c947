"""V3 adapter: ``DTGenPromptSampler`` (ComfyUI only; the logic is in pack.py and sampler.py)."""
from __future__ import annotations

import json
import os

import folder_paths
from comfy_api.latest import io, ui

from .comfy_paths import dataset_dir
from .comfy_types import dataset_input, dataset_name_of
from .off_loop import off_loop
from ..common.records import GENERATED
from ..common.naming import category, node_id
from ..common.validation import linked
from ..prompting import catalog
from ..prompting.catalog import USER_FOLDER
from ..prompting.pack import PromptPackError
from ..prompting.sampler import MAX_COUNT, MODES, Sampler, summary

folder_paths.add_model_folder_path(USER_FOLDER, os.path.join(folder_paths.models_dir, USER_FOLDER))


def pack_files() -> dict[str, str]:
    return catalog.pack_files(folder_paths.get_folder_paths(USER_FOLDER))


def build_sampler(pack: str, mode: str, seed: int, classes: str = "", inline_yaml: str = "") -> Sampler:
    return catalog.build_sampler(pack, mode, seed, classes, inline_yaml, folder_paths.get_folder_paths(USER_FOLDER))


def _resume_dir(dataset_name: str, quota_per_class: int):
    if not (dataset_name or "").strip() or not quota_per_class:
        return None
    return dataset_dir(dataset_name)


def missing_indices(sampler: Sampler, dataset_dir, start: int, count: int, quota: int) -> list[int]:
    """The next `count` indices >= start that the dataset lacks and no other run has claimed, for
    classes below `quota`; they are claimed for this run (several servers on one dataset)."""
    from ..curation.claims import claim_missing_indices
    from ..store.reconcile import ensure_consistent

    ensure_consistent(dataset_dir)   # a crash may have left derived files behind the manifest
    scan = None
    if sampler.mode == "exhaustive":
        scan = max(0, sampler.total - start)
    return claim_missing_indices(dataset_dir, sampler.label_of, start, count,
                                 targets={label: quota for label in sampler.labels}, stream_key=sampler.stream_key,
                                 pack_hash=sampler.pack.pack_hash, max_scan=scan, source=GENERATED)


class DTGenPromptSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        packs = list(pack_files()) or ["tableware"]
        return io.Schema(
            node_id=node_id("PromptSampler"),
            display_name="DTGen Prompt Sampler",
            category=category("prompting"),
            description=(
                "Structured prompts from a YAML prompt pack: item i -> (label, positive, negative, seed, "
                "metadata) as a pure function of the pack, the seed and i. Emits `count` items as lists, "
                "so one queue run fans out `count` generations; rerunning the same inputs gives the same "
                "prompts and seeds."),
            inputs=[
                io.Combo.Input("pack", options=packs, default=packs[0],
                               tooltip="Prompt pack: a YAML file from the pack's prompts/ folder or the "
                                       "'dtgen_prompts' model folder (models/dtgen_prompts); a user pack named like "
                                       "a shipped one is listed as user/<file>."),
                io.Combo.Input("mode", options=list(MODES), default="balanced",
                               tooltip="balanced: classes in turn (any prefix is balanced); random: class "
                                       "drawn by weight; exhaustive: every combination exactly once."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Base seed. Prompts and per-item image seeds derive from (pack, seed, index). A new seed is a "
                                     "new item sequence: its items are new dataset items, not duplicates."),
                io.Int.Input("start_index", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Index of the first item of this run (0-based). Use it to resume or shard a run."),
                io.Int.Input("count", default=1, min=1, max=MAX_COUNT,
                             tooltip="Number of items emitted as lists; downstream nodes run once per item."),
                io.String.Input("classes", default="", optional=True,
                                tooltip="Optional comma-separated class labels to sample from (empty = all classes)."),
                io.String.Input("inline_yaml", default="", multiline=True, optional=True,
                                tooltip="Optional prompt pack as YAML text; when not empty it replaces the chosen pack file."),
                io.String.Input("dataset_name", default="dtgen_dataset", optional=True,
                                tooltip="Resume mode (on by default), with quota_per_class: emit the next `count` "
                                        "items this dataset (under ComfyUI's output folder) does not hold yet, "
                                        "class by class (the class with the fewest images first), so queueing again "
                                        "and again fills every class in turn, whatever the seed. Use the Dataset "
                                        "Writer's dataset_name. Empty = plain start_index..+count."),
                io.Int.Input("quota_per_class", default=1000, min=0, max=10_000_000, optional=True,
                             tooltip="Resume mode: accepted images wanted per class. When every class is full the "
                                     "run stops here (nothing downstream executes). 0 = resume mode off."),
                dataset_input(),
            ],
            outputs=[
                io.String.Output("positive", display_name="positive", is_output_list=True,
                                 tooltip="Positive prompt per item (trigger + template + suffix)."),
                io.String.Output("negative", display_name="negative", is_output_list=True,
                                 tooltip="Negative prompt per item."),
                io.String.Output("label", display_name="label", is_output_list=True,
                                 tooltip="Class label per item (a safe folder name)."),
                io.Int.Output("item_seed", display_name="seed", is_output_list=True,
                              tooltip="Per-item image seed (< 2^53, inside KSampler's range); wire it to KSampler."),
                io.String.Output("metadata", display_name="metadata", is_output_list=True,
                                 tooltip="Per-item metadata as JSON: pack, pack_hash, stream, index, class "
                                         "metadata, clip_text, slot choices."),
                io.Int.Output("total", display_name="total",
                              tooltip="Size of the pack's combination space for the chosen classes."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, dataset_name="", quota_per_class=0, **_) -> str:
        # In resume mode the items depend on the dataset's content: rerun when it changed.
        ds = _resume_dir(dataset_name, quota_per_class)
        if ds is None:
            return ""
        from ..store.reader import history_fingerprint

        return history_fingerprint(ds)

    @classmethod
    async def validate_inputs(cls, pack, classes="", inline_yaml="") -> bool | str:
        # ComfyUI repeats a failure under every input named here (and skips its own checks for
        # them), so only the inputs of the one queue-time check are named: the pack and the class
        # subset. mode and dataset_name are checked when the sampler runs (it runs first).
        return await off_loop(_check_pack, pack, classes, inline_yaml)   # parses the pack

    @classmethod
    def execute(cls, pack, mode, seed, start_index, count, classes="", inline_yaml="", dataset_name="",
                quota_per_class=0, dataset=None) -> io.NodeOutput:
        from comfy.model_management import throw_exception_if_processing_interrupted

        sampler = build_sampler(pack, mode, seed, classes, inline_yaml)
        dataset_name = dataset_name_of(dataset, dataset_name)
        ds = _resume_dir(dataset_name, quota_per_class)
        if ds is None:
            indices = sampler.check_range(start_index, count)
        else:
            indices = missing_indices(sampler, ds, start_index, count, quota_per_class)
        items = []
        for i in indices:   # each item is bounded by the pack's budgets; /interrupt works between them
            throw_exception_if_processing_interrupted()
            items.append(sampler.item(i))
        if ds is not None and not items:   # every class is full: stop quietly, nothing downstream runs
            from comfy_execution.graph_utils import ExecutionBlocker

            return io.NodeOutput(*[ExecutionBlocker(None)] * 5, sampler.total,
                                 ui=ui.PreviewText(f"every class of {dataset_name} has {quota_per_class} images: done"))
        note = f"resume mode: {dataset_name}, {quota_per_class} per class" if ds is not None else ""
        return io.NodeOutput(
            [it.positive for it in items],
            [it.negative for it in items],
            [it.label for it in items],
            [it.seed for it in items],
            [json.dumps(it.metadata, sort_keys=True) for it in items],
            sampler.total,
            ui=ui.PreviewText(summary(items, note=note)),
        )


def _check_pack(pack, classes="", inline_yaml="") -> bool | str:
    try:
        if not linked(pack, classes, inline_yaml):
            build_sampler(pack, "balanced", 0, classes, inline_yaml)
    except (PromptPackError, ValueError) as exc:
        return str(exc)
    return True


NODES = [DTGenPromptSampler]
