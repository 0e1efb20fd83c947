"""V3 adapters for mask-conditioned defect generation (DefFiller's recipe): ``DTGenMaskSampler``
and ``DTGenMaskIoUFilter`` (ComfyUI only; the logic is in synthesis/defect_masks.py,
curation/mask_iou.py and curation/change_detect.py).

Surfaces are background sets (``models/dtgen_backgrounds/<set>/`` or ``input/<name>``); real defect
masks, when used, are sets of ``models/dtgen_masks/<set>/`` (PNG, white = defect).
"""
from __future__ import annotations

import hashlib
import json

from comfy_api.latest import io, ui

from .clip_filter import stack_images
from .comfy_paths import cached_build, folder_sets, listing_fingerprint, register_folder, resolve_set
from .comfy_types import ScoredBatchType
from .copy_paste import BACKGROUND_FOLDER, background_folder
from ..common.items import items_from_lists
from ..common.lists import as_list, first
from ..common.naming import category, node_id
from ..common.records import ScoredBatch

MASK_FOLDER = "dtgen_masks"
NO_REAL_MASKS = "none (procedural shapes)"
register_folder(MASK_FOLDER)

def _error(path, message):
    from ..synthesis.errors import SynthesisError

    return SynthesisError(path, message)


def build(surfaces: str, size: int, seed: int, min_width: int, scale_min: float, scale_max: float, shapes: str,
          real_masks: str):
    """(mask sampler, surfaces) for these inputs, cached by folder content."""
    from ..synthesis.backgrounds import load_backgrounds
    from ..synthesis.defect_masks import DefectMaskSampler

    surf = background_folder(surfaces)
    real = None if real_masks == NO_REAL_MASKS else resolve_set(MASK_FOLDER, real_masks, "defect mask set", _error)
    key = ("defect_masks", surf, listing_fingerprint(surf), real, real and listing_fingerprint(real), size, seed, min_width,
           scale_min, scale_max, shapes)
    return cached_build(key, lambda: (
        DefectMaskSampler(size, shapes=shapes or None, seed=seed, min_width=min_width, scale=(scale_min, scale_max),
                          real_masks=real),
        load_backgrounds(surf)))


def surface_index(stream: str, index: int, count: int) -> int:
    """The surface of item ``index``: a hash, so the same item always gets the same surface."""
    digest = hashlib.blake2b(f"{stream}:{index}".encode(), digest_size=8, person=b"dtgen.surface").digest()
    return int.from_bytes(digest, "little") % count


def _index_of(meta: dict, n: int) -> int:
    index = meta.get("index")
    return int(index) if isinstance(index, int) and index >= 0 else n


class DTGenMaskSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        surfaces = list(folder_sets(BACKGROUND_FOLDER)) or ["my_surfaces"]
        real = [NO_REAL_MASKS, *folder_sets(MASK_FOLDER)]
        return io.Schema(
            node_id=node_id("MaskSampler"),
            display_name="DTGen Mask Sampler",
            category=category("synthesis"),
            description=(
                "A defect mask and a surface image per prompt-sampler item, for mask-conditioned inpainting "
                "(DefFiller): procedural shapes per defect class (scratch, crack, blob, patch, pits) or your real "
                "masks placed, scaled, rotated and deformed, never thinner than min_width. The same item always "
                "gets the same mask and surface. Wire label and metadata from DTGen Prompt Sampler, so prompt and "
                "mask describe the same defect."),
            is_input_list=True,
            inputs=[
                io.String.Input("label", force_input=True,
                                tooltip="Defect class per item (from DTGen Prompt Sampler): picks the mask shape."),
                io.String.Input("metadata", force_input=True,
                                tooltip="Metadata per item (from DTGen Prompt Sampler): its index makes the mask."),
                io.Combo.Input("surfaces", options=surfaces, default=surfaces[0],
                               tooltip="Surface images to inpaint on (defect-free or defective): a folder of photos "
                                       "in models/dtgen_backgrounds or input/<name>; one is picked per item."),
                io.Int.Input("size", default=512, min=64, max=4096, step=16,
                             tooltip="Surface and mask size (size x size; multiples of 16 suit SD3)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of the masks and of the surface choice."),
                io.Int.Input("min_width", default=10, min=1, max=256,
                             tooltip="Thinnest part of a mask in pixels. DefFiller: defects under 10 px wide are "
                                     "hard to generate faithfully; keep 10 unless your defects are that thin."),
                io.Float.Input("scale_min", default=0.15, min=0.01, max=1.0, step=0.01,
                               tooltip="Smallest defect extent, as a fraction of the image side."),
                io.Float.Input("scale_max", default=0.5, min=0.01, max=1.0, step=0.01,
                               tooltip="Largest defect extent, as a fraction of the image side."),
                io.String.Input("shapes", default="", multiline=True, optional=True,
                                tooltip="Optional 'label: shape' lines (scratch, crack, blob, patch, pits). Default "
                                        "from the name: crack/crazing -> crack, scratch -> scratch, inclusion/spot "
                                        "-> blob, patch/scale -> patch, pit -> pits, else blob."),
                io.Combo.Input("real_masks", options=real, default=NO_REAL_MASKS, optional=True,
                               tooltip="Optional set of real defect masks (PNG, white = defect) in models/dtgen_masks: "
                                       "placed, scaled, rotated and elastically deformed instead of procedural shapes."),
            ],
            outputs=[
                io.Image.Output("surface", display_name="surface", is_output_list=True,
                                tooltip="The surface image per item (VAE Encode it, and composite the result onto it)."),
                io.Mask.Output("mask", display_name="mask", is_output_list=True,
                               tooltip="The defect mask per item (1 x H x W): Set Latent Noise Mask, the IoU filter's "
                                       "condition and the Dataset Writer's masks."),
                io.String.Output("mask_metadata", display_name="metadata", is_output_list=True,
                                 tooltip="The item's metadata with the mask's facts added (shape, bbox, area, surface)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, surfaces, shapes=None, real_masks=None) -> bool | str:
        from ..common.validation import linked
        from ..synthesis.defect_masks import parse_shapes
        from ..synthesis.errors import SynthesisError

        try:
            surface = first(surfaces)
            if not linked(surface):
                background_folder(surface)
            if shapes is not None and not linked(first(shapes)):
                parse_shapes(first(shapes) or "")
            real = first(real_masks, NO_REAL_MASKS)
            if not linked(real) and real != NO_REAL_MASKS:
                resolve_set(MASK_FOLDER, real, "defect mask set", _error)
        except SynthesisError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, label, metadata, surfaces, size, seed, min_width, scale_min, scale_max, shapes=None,
                real_masks=None) -> io.NodeOutput:
        import torch
        from comfy.model_management import throw_exception_if_processing_interrupted

        from ..common.memory import check_output_memory

        labels, metas = as_list(label), as_list(metadata)
        if len(metas) not in (1, len(labels)):
            raise ValueError(f"DTGen Mask Sampler: {len(metas)} metadata values for {len(labels)} labels; wire both "
                             "from the same DTGen Prompt Sampler")
        # before anything is made: a surface image (3 planes) and a mask (1) per item
        check_output_memory("DTGen Mask Sampler", len(labels), first(size), 4,
                            "lower the prompt sampler's count or this node's size")
        sampler, backgrounds = build(first(surfaces), first(size), first(seed), first(min_width), first(scale_min),
                                     first(scale_max), first(shapes, "") or "", first(real_masks, NO_REAL_MASKS))
        out_images, out_masks, out_meta, shown = [], [], [], []
        for n, lab in enumerate(labels):
            throw_exception_if_processing_interrupted()   # /interrupt works between items
            meta = json.loads(metas[n if len(metas) > 1 else 0] or "{}")
            index = _index_of(meta, n)
            mask, facts = sampler.mask(index, lab)
            j = surface_index(sampler.stream, index, len(backgrounds))
            facts["surface"] = backgrounds.entries[j].name
            out_images.append(torch.from_numpy(backgrounds.fitted(j, first(size)).copy())[None])
            out_masks.append(torch.from_numpy(mask.astype("float32"))[None])
            out_meta.append(json.dumps(dict(meta, defect_mask=facts), sort_keys=True))
            if n < 5:
                shown.append(f"#{index} {lab}: {facts['shape']}, {facts['area']} px on {facts['surface']}")
        head = f"{len(labels)} defect mask(s), min width {first(min_width)} px"
        return io.NodeOutput(out_images, out_masks, out_meta, ui=ui.PreviewText("\n".join([head, *shown])))


class DTGenMaskIoUFilter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("MaskIoUFilter"),
            display_name="DTGen Mask IoU Filter",
            category=category("filtering"),
            description=(
                "Keeps an inpainted defect only where it landed in its mask (DefFiller: IoU between the conditioning "
                "mask and a predicted mask >= 0.6). The predicted mask comes from your segmenter (predicted_masks) "
                "or, when none is wired, from a change detector (what differs between the surface and the result; "
                "the manifest says which). Wire a CLIP filter's scored batch to require both checks."),
            is_input_list=True,
            inputs=[
                io.Mask.Input("masks", tooltip="Conditioning mask per item (from DTGen Mask Sampler)."),
                ScoredBatchType.Input("scored", optional=True,
                                      tooltip="Items already scored by DTGen CLIP Filter: both checks must pass, both "
                                              "scores are stored. Otherwise wire images + label + metadata."),
                io.Image.Input("images", optional=True, tooltip="Generated images (when no scored batch is wired)."),
                io.String.Input("label", force_input=True, optional=True, tooltip="Class label per image."),
                io.String.Input("metadata", force_input=True, optional=True, tooltip="Metadata per image."),
                io.String.Input("positive", force_input=True, optional=True, tooltip="Prompt per image."),
                io.Image.Input("source_images", optional=True,
                               tooltip="The surfaces the defects were inpainted on: the change detector compares them "
                                       "with the results when no predicted_masks are wired."),
                io.Mask.Input("predicted_masks", optional=True,
                              tooltip="Optional: masks your segmenter or detector predicts on the generated images."),
                io.Float.Input("threshold", default=0.6, min=0.0, max=1.0, step=0.01,
                               tooltip="IoU an image must reach (DefFiller: 0.6)."),
                io.String.Input("per_class", default="", multiline=True, optional=True,
                                tooltip="Optional 'label: threshold' lines overriding the threshold per class."),
                io.Int.Input("min_count", default=8, min=1, max=10_000, optional=True,
                             tooltip="Below this many IoUs in a class, decisions are marked provisional."),
                io.Float.Input("change_threshold", default=0.1, min=0.001, max=1.0, step=0.005, optional=True,
                               tooltip="Change detector: colour difference (0-1) that counts as changed."),
                io.Float.Input("change_blur", default=1.5, min=0.1, max=20.0, step=0.1, optional=True,
                               tooltip="Change detector: gaussian blur sigma (px) before thresholding."),
                io.Int.Input("change_min_area", default=32, min=0, max=1_000_000, optional=True,
                             tooltip="Change detector: changed regions smaller than this (px) are ignored."),
                io.Int.Input("change_opening", default=1, min=0, max=32, optional=True,
                             tooltip="Change detector: opening radius (px) that removes thin noise."),
            ],
            outputs=[
                ScoredBatchType.Output("iou_scored", display_name="scored",
                                       tooltip="Items with their IoU decision: wire to DTGen Dataset Writer."),
                io.Image.Output("accepted", display_name="accepted", tooltip="Accepted images (preview)."),
                io.Image.Output("rejected", display_name="rejected", tooltip="Rejected images (preview)."),
                io.Mask.Output("predicted", display_name="predicted", is_output_list=True,
                               tooltip="The predicted mask per item (segmenter's or change detector's)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, per_class=None) -> bool | str:
        from ..common.validation import linked
        from ..curation.mask_iou import MaskIoUError, parse_per_class

        text = first(per_class)
        if text is None or linked(text):
            return True
        try:
            parse_per_class(text)
        except MaskIoUError as exc:
            return f"DTGen Mask IoU Filter: {exc}"
        return True

    @classmethod
    def execute(cls, masks, scored=None, images=None, label=None, metadata=None, positive=None, source_images=None,
                predicted_masks=None, threshold=None, per_class=None, min_count=None, change_threshold=None,
                change_blur=None, change_min_area=None, change_opening=None) -> io.NodeOutput:
        import torch
        from comfy.model_management import throw_exception_if_processing_interrupted

        from ..curation.mask_iou import decide_iou, parse_per_class, predicted_from_change

        items = []
        for batch in as_list(scored):
            items.extend(batch.items if isinstance(batch, ScoredBatch) else [])
        if not items and as_list(images):
            items = items_from_lists(as_list(images), as_list(positive) or [""], as_list(label), as_list(metadata))
        if not items:
            raise ValueError("DTGen Mask IoU Filter: no images; wire 'scored' (DTGen CLIP Filter) or 'images' + 'label'")
        conditions = [m.detach().float().cpu().numpy() for m in as_list(masks)]
        predicted = [m.detach().float().cpu().numpy() for m in as_list(predicted_masks)]
        sources = [s.detach().float().cpu().numpy() for s in as_list(source_images)]
        if len(conditions) != len(items):
            raise ValueError(f"DTGen Mask IoU Filter: {len(conditions)} masks for {len(items)} images; wire the masks "
                             "from the node that made the images")
        params = {"threshold": first(change_threshold, 0.1), "sigma": first(change_blur, 1.5),
                  "min_area": first(change_min_area, 32), "opening": first(change_opening, 1)}
        entries, shown = [], []
        for n, (item, cond) in enumerate(zip(items, conditions)):
            throw_exception_if_processing_interrupted()   # /interrupt works between items
            if predicted:
                pred, predictor = predicted[n if len(predicted) > 1 else 0], {"predictor": "predicted_masks input"}
            elif sources:
                src = sources[n if len(sources) > 1 else 0]
                change = predicted_from_change(src[0] if src.ndim == 4 else src, item.image, **params)
                pred, predictor = change.mask, {"predictor": "change_detector", "params": change.params}
            else:
                raise ValueError("DTGen Mask IoU Filter: wire predicted_masks (your segmenter) or source_images (the "
                                 "surfaces, for the built-in change detector)")
            item.extra = dict(item.extra or {}, mask_predictor=predictor)
            entries.append({"item": item, "condition": cond, "predicted": pred})
            shown.append(torch.from_numpy(pred.astype("float32").reshape(pred.shape[-2:]))[None])
        overrides = parse_per_class(first(per_class, ""))
        decisions = decide_iou(entries, threshold=first(threshold, 0.6), per_class=overrides,
                               min_count=first(min_count, 8))
        kept = sum(d.accepted for d in decisions)
        lines = [f"mask IoU >= {first(threshold, 0.6)}: kept {kept} of {len(decisions)}"]
        lines += [f"{it.label}: IoU {d.iou:.3f} {d.reason}" if d.iou is not None else f"{it.label}: {d.reason}"
                  for it, d in list(zip(items, decisions))[:8]]
        batch = ScoredBatch(items, config={"mask_iou": {"threshold": first(threshold, 0.6), "per_class": overrides,
                                                        "change_detector": None if predicted else params}})
        return io.NodeOutput(batch, stack_images([it for it in items if it.accepted]),
                             stack_images([it for it in items if not it.accepted]), shown,
                             ui=ui.PreviewText("\n".join(lines)))


NODES = [DTGenMaskSampler, DTGenMaskIoUFilter]
