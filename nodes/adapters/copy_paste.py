"""V3 adapter: ``DTGenCopyPaste`` (ComfyUI only; the logic is in nodes/synthesis/).

Cutout sets are sub-folders of the registered model folder ``dtgen_cutouts``
(``models/dtgen_cutouts/<set>/<label>/*.png``) or ``input/<name>``; background sets of
``dtgen_backgrounds`` (a flat folder of photos) or ``input/<name>``, or any IMAGE batch wired to
``background_images``.
"""
from __future__ import annotations

import json

from comfy_api.latest import io

from .comfy_paths import cached_build, dataset_dir, folder_sets, listing_fingerprint, register_folder, resolve_set
from .comfy_types import dataset_input, dataset_name_of
from .off_loop import off_loop
from ..common.naming import category, node_id

CUTOUT_FOLDER, BACKGROUND_FOLDER = "dtgen_cutouts", "dtgen_backgrounds"
SOURCE = "copy_paste"
MAX_COUNT = 4096
MIN_SIZE, MAX_SIZE = 64, 4096
for _folder in (CUTOUT_FOLDER, BACKGROUND_FOLDER):
    register_folder(_folder)



def _error(path, message):
    from ..synthesis.errors import SynthesisError

    return SynthesisError(path, message)


def cutout_folder(name: str) -> str:
    return resolve_set(CUTOUT_FOLDER, name, "cutout set", _error)


def background_folder(name: str) -> str:
    return resolve_set(BACKGROUND_FOLDER, name, "background set", _error)


def build(cutouts: str, backgrounds: str, size: int, seed: int, params: dict, classes: str = "",
          background_images=None):
    """The copy-paste stage for these inputs, cached by folder content (names, sizes, times)."""
    from ..synthesis.copy_paste import CopyPaste

    cut_dir = cutout_folder(cutouts)
    subset = tuple(c.strip() for c in (classes or "").split(",") if c.strip())
    if background_images is not None:   # wired images: no cache (their content is the key)
        frames = list(background_images.detach().float().cpu().numpy())
        return CopyPaste(cut_dir, frames, size, seed=seed, classes=subset or None, **params)
    bg_dir = background_folder(backgrounds)
    key = ("copy_paste", cut_dir, listing_fingerprint(cut_dir), bg_dir, listing_fingerprint(bg_dir), size, seed,
           subset, json.dumps(params, sort_keys=True))
    return cached_build(key, lambda: CopyPaste(cut_dir, bg_dir, size, seed=seed, classes=subset or None, **params))


def _params(objects_min, objects_max, scale_min, scale_max, rotation, flip, max_overlap, jitter, blend) -> dict:
    return {"objects": (objects_min, objects_max), "scale": (scale_min, scale_max), "rotation": rotation,
            "flip": flip, "max_overlap": max_overlap, "jitter": jitter, "blend": blend}


def _resume_indices(stage, ds, start: int, count: int, quota: int) -> list[int]:
    from ..common.identity import StreamKey
    from ..curation.claims import claim_missing_indices
    from ..store.reconcile import ensure_consistent

    ensure_consistent(ds)
    return claim_missing_indices(ds, stage.label_of, start, count, targets={label: quota for label in stage.labels},
                                 stream_key=StreamKey(stage.stream, stage.seed, SOURCE), pack_hash=None,
                                 source=SOURCE)


class DTGenCopyPaste(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from ..synthesis.copy_paste import BLENDS, MAX_OBJECTS

        cut_sets = list(folder_sets(CUTOUT_FOLDER)) or ["my_cutouts"]
        bg_sets = list(folder_sets(BACKGROUND_FOLDER)) or ["my_backgrounds"]
        return io.Schema(
            node_id=node_id("CopyPaste"),
            display_name="DTGen Copy-Paste",
            category=category("synthesis"),
            description=(
                "Copy-paste synthesis: real cutouts of one class pasted on real backgrounds at random positions, "
                "scales, rotations and flips (no overlap by default), with an exact instance mask and box per "
                "object. Item i is a pure function of the files, the settings, the seed and i, like the prompt "
                "sampler: resumable and shardable. No GPU, no diffusion model. Emits `count` items as lists."),
            inputs=[
                io.Combo.Input("cutouts", options=cut_sets, default=cut_sets[0],
                               tooltip="Cutout set: <label>/ folders of RGBA PNGs (alpha = object) or images with a "
                                       "<name>_mask.png beside them, in models/dtgen_cutouts or input/<name>."),
                io.Combo.Input("backgrounds", options=bg_sets, default=bg_sets[0],
                               tooltip="Background set: a folder of photos (any size, centre-cropped) in "
                                       "models/dtgen_backgrounds or input/<name>. Ignored when background_images "
                                       "is wired."),
                io.Int.Input("size", default=512, min=MIN_SIZE, max=MAX_SIZE, step=8,
                             tooltip="Output images are size x size pixels."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Base seed: items derive from (files, settings, seed, index)."),
                io.Int.Input("start_index", default=0, min=0, max=2 ** 62,
                             tooltip="Index of the first item of this run (resume mode off)."),
                io.Int.Input("count", default=8, min=1, max=MAX_COUNT,
                             tooltip="Items per queue run, emitted as lists (downstream nodes run once per item)."),
                io.Int.Input("objects_min", default=1, min=1, max=MAX_OBJECTS,
                             tooltip="Fewest objects pasted per image."),
                io.Int.Input("objects_max", default=1, min=1, max=MAX_OBJECTS,
                             tooltip="Most objects pasted per image (as many as fit without overlap are placed; "
                                     "the metadata says how many)."),
                io.Float.Input("scale_min", default=0.25, min=0.01, max=1.0, step=0.01,
                               tooltip="Smallest object: its longer side as a fraction of the image side."),
                io.Float.Input("scale_max", default=0.6, min=0.01, max=1.0, step=0.01,
                               tooltip="Largest object: its longer side as a fraction of the image side."),
                io.Float.Input("rotation", default=15.0, min=0.0, max=180.0, step=1.0,
                               tooltip="Random rotation in degrees, up to +-this value."),
                io.Boolean.Input("flip", default=True, tooltip="Random horizontal flips."),
                io.Float.Input("max_overlap", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Largest IoU between two objects' boxes; 0 = no overlap at all (as in the "
                                       "copy-paste study). Above 0 a later object may hide part of an earlier one."),
                io.Float.Input("jitter", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Colour jitter strength (brightness, contrast, saturation); 0 = off."),
                io.Combo.Input("blend", options=list(BLENDS), default="gaussian",
                               tooltip="none: hard edges; gaussian: feathered edges inside the object (the masks "
                                       "stay exact)."),
                io.String.Input("classes", default="", optional=True,
                                tooltip="Optional comma-separated classes to paste (empty = every class folder)."),
                io.Image.Input("background_images", optional=True,
                               tooltip="Optional backgrounds as an IMAGE batch (replaces the background set)."),
                io.String.Input("dataset_name", default="dtgen_dataset", optional=True,
                                tooltip="Resume mode, with quota_per_class: emit the next items this dataset lacks, "
                                        "counting copy-paste images only (a hybrid dataset fills each source's quota "
                                        "apart). Empty = plain start_index..+count."),
                io.Int.Input("quota_per_class", default=1000, min=0, max=10_000_000, optional=True,
                             tooltip="Resume mode: copy-paste images wanted per class; when every class has them "
                                     "the run stops here. 0 = resume mode off."),
                dataset_input(),
            ],
            outputs=[
                io.Image.Output("image", display_name="image", is_output_list=True,
                                tooltip="The pasted image per item."),
                io.Mask.Output("masks", display_name="masks", is_output_list=True,
                               tooltip="Instance masks per item (n x H x W, one per visible object): wire to the "
                                       "Dataset Writer's masks input."),
                io.Mask.Output("mask", display_name="mask", is_output_list=True,
                               tooltip="All objects of the item as one mask (1 x H x W)."),
                io.String.Output("label", display_name="label", is_output_list=True,
                                 tooltip="Class label per item (every object of an item is of this class)."),
                io.String.Output("prompt", display_name="prompt", is_output_list=True,
                                 tooltip="'a photo of <label>' per item: a text for the CLIP filter."),
                io.String.Output("metadata", display_name="metadata", is_output_list=True,
                                 tooltip="Per-item metadata as JSON: source copy_paste, stream, index, cutouts, "
                                         "background, placements, objects requested / placed."),
                io.String.Output("boxes", display_name="boxes", is_output_list=True,
                                 tooltip="Per-item objects as JSON: [{id, label, bbox [x, y, w, h], area}]."),
            ],
        )

    @classmethod
    async def validate_inputs(cls, cutouts, backgrounds, classes="", size=512, count=8, objects_max=1) -> bool | str:
        # size, count and objects_max are named for the memory estimate, so their ranges are checked here too
        return await off_loop(_check_sets, cutouts, backgrounds, classes, size, count, objects_max)   # decodes the cutouts

    @classmethod
    def fingerprint_inputs(cls, cutouts, backgrounds, dataset_name="", quota_per_class=0, dataset=None, **_) -> str:
        parts = []
        for fn, name in ((cutout_folder, cutouts), (background_folder, backgrounds)):
            try:
                parts.append(listing_fingerprint(fn(name)))
            except ValueError:
                parts.append("")
        name = dataset_name_of(dataset, dataset_name)
        if name.strip() and quota_per_class:
            from ..store.reader import history_fingerprint

            parts.append(history_fingerprint(dataset_dir(name)))
        return "|".join(parts)

    @classmethod
    def execute(cls, cutouts, backgrounds, size, seed, start_index, count, objects_min, objects_max, scale_min,
                scale_max, rotation, flip, max_overlap, jitter, blend, classes="", background_images=None,
                dataset_name="", quota_per_class=0, dataset=None) -> io.NodeOutput:
        import torch
        from comfy.model_management import throw_exception_if_processing_interrupted
        from comfy.utils import ProgressBar

        from ..common.labels import default_class_text
        from ..synthesis.copy_paste import summary

        stage = build(cutouts, backgrounds, size, seed,
                      _params(objects_min, objects_max, scale_min, scale_max, rotation, flip, max_overlap, jitter,
                              blend), classes, background_images)
        name = dataset_name_of(dataset, dataset_name)
        ds = dataset_dir(name) if name.strip() and quota_per_class else None
        if ds is None:
            indices = list(range(start_index, start_index + count))
        else:
            indices = _resume_indices(stage, ds, start_index, count, quota_per_class)
            if not indices:
                from comfy_execution.graph_utils import ExecutionBlocker

                from ..synthesis.copy_paste import DONE_TEXT

                return io.NodeOutput(*[ExecutionBlocker(None)] * 7, ui=_status(
                    f"every class of {name} has {quota_per_class} {DONE_TEXT}", made=0, done=True))
        bar = ProgressBar(len(indices))
        items = []
        for i in indices:
            throw_exception_if_processing_interrupted()
            items.append(stage.item(i))
            bar.update(1)
        images, masks, unions = [], [], []
        for it in items:
            images.append(torch.from_numpy(it.image)[None])
            n = len(it.instance_labels)
            ids = torch.from_numpy(it.instance_map.astype("int64"))
            per = torch.stack([(ids == k).float() for k in range(1, n + 1)]) if n else torch.zeros((0, *ids.shape))
            masks.append(per)
            unions.append((ids > 0).float()[None])
        boxes = [json.dumps([{"id": b.id, "label": b.label, "bbox": list(b.bbox), "area": b.area} for b in it.boxes])
                 for it in items]
        note = f"resume mode: {name}, {quota_per_class} copy-paste images per class\n" if ds is not None else ""
        return io.NodeOutput(images, masks, unions, [it.label for it in items],
                             [default_class_text(it.label) for it in items],
                             [json.dumps(it.metadata, sort_keys=True) for it in items], boxes,
                             ui=_status(note + summary(items), made=len(items), done=False))


def _status(text: str, made: int, done: bool) -> dict:
    """The canvas text, and the same facts for programs: ``/history`` then holds
    ``outputs[<node>]["dtgen_copy_paste"] == [{"made": n, "done": bool}]`` (the queue client reads
    it; ``done``: every class has its quota, nothing was made)."""
    return {"text": (text,), "dtgen_copy_paste": [{"made": made, "done": done}]}


def _check_sets(cutouts, backgrounds, classes="", size=512, count=8, objects_max=1) -> bool | str:
    # the outputs' memory, the sets (scanned and decoded once, then cached for the run) and the class subset
    from ..common.memory import check_output_memory
    from ..common.validation import check_int, linked
    from ..synthesis.copy_paste import MAX_OBJECTS
    from ..synthesis.errors import SynthesisError

    try:
        sized = [(n, v, lo, hi) for n, v, lo, hi in (("size", size, MIN_SIZE, MAX_SIZE), ("count", count, 1, MAX_COUNT),
                                                      ("objects_max", objects_max, 1, MAX_OBJECTS)) if not linked(v)]
        for name, value, lo, hi in sized:
            check_int(name, value, lo, hi)
        if len(sized) == 3:   # image (3) + union mask (1) + one mask per object
            check_output_memory("DTGen Copy-Paste", count, size, 4 + objects_max,
                                "lower count (queue several prompts: the resume mode and the queue client "
                                "do) or size")
    except ValueError as exc:   # common.memory.MemoryBudgetError is one
        return str(exc)
    if linked(cutouts, backgrounds, classes):
        return True
    try:
        from ..synthesis.cutouts import load_cutouts

        found = load_cutouts(cutout_folder(cutouts))
        unknown = [c.strip() for c in (classes or "").split(",") if c.strip() and c.strip() not in found]
        if unknown:
            return f"classes: unknown class {unknown[0]!r}; the cutouts have {', '.join(sorted(found))}"
        background_folder(backgrounds)
    except SynthesisError as exc:   # FewShotError's subclass: file errors name the file
        return str(exc)
    return True


NODES = [DTGenCopyPaste]
