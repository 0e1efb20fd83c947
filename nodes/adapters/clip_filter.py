"""V3 adapters: ``DTGenClipLoader`` and ``DTGenClipFilter`` (ComfyUI only).

The logic (loading, batched scoring, thresholds, decisions, plot) lives in the plain modules of
this folder; this file translates ComfyUI lists and tensors, places the model through ComfyUI's
model management (so it is offloaded when memory is needed) and reports progress.
"""
from __future__ import annotations

import dataclasses
import os

import folder_paths
from comfy_api.latest import io, ui
from comfy_execution.graph_utils import ExecutionBlocker

from .comfy_types import (DtgenClip, RealImagesType, ScoredBatchType, dataset_input, dataset_name_of,
                          real_anchor_inputs, threshold_inputs)
from .comfy_paths import dataset_dir
from .off_loop import off_loop
from ..common.items import items_from_lists
from ..common.lists import as_list, first
from ..common.naming import category, node_id
from ..common.records import ScoredItem
from ..curation.real_anchor import BASES, DEFAULT_TOP_K
from ..scoring.precision import PRECISIONS
from ..scoring.similarity import TEXT_SIDES

CLIP_FOLDER = "open_clip"  # models/open_clip, mappable in extra_model_paths.yaml
WEIGHT_SUFFIXES = {".safetensors", ".pt", ".pth", ".bin"}
# is_default: models/open_clip comes first, so the download entry writes there
folder_paths.add_model_folder_path(CLIP_FOLDER, os.path.join(folder_paths.models_dir, CLIP_FOLDER), is_default=True)
folder_paths.folder_names_and_paths[CLIP_FOLDER][1].update(WEIGHT_SUFFIXES)
FROM_CACHE = "(open_clip / Hugging Face cache)"
DOWNLOAD = "(download pretrained_tag into models/open_clip)"   # the only entry that downloads


# ------------------------------------------------------------------------------------ loader
class LoadedClip:
    """A cached ``ClipBundle`` plus the ModelPatcher through which ComfyUI places and offloads it."""

    def __init__(self, bundle):
        import comfy.model_management as mm
        import comfy.model_patcher

        self.bundle = bundle
        self.load_device = mm.text_encoder_device()
        self.patcher = comfy.model_patcher.ModelPatcher(
            bundle.model, load_device=self.load_device, offload_device=mm.text_encoder_offload_device())

    def ready(self):
        """Load onto ComfyUI's device (freeing other models if needed); the bundle to score with."""
        import comfy.model_management as mm

        mm.load_models_gpu([self.patcher])
        return dataclasses.replace(self.bundle, device=str(self.load_device))


_LOADED: dict[int, LoadedClip] = {}  # id(bundle) -> wrapper, so a cached bundle gets one patcher


def resolve_weights(weights: str, arch: str, pretrained_tag: str, fetch: bool = False) -> str:
    """Local path of the chosen weights. ``DOWNLOAD`` fetches them only when ``fetch`` is true
    (execution); validation just checks that arch and tag name downloadable weights."""
    from ..scoring.clip_model import ClipFilterError, find_cached_weights
    from ..scoring.download import check_downloadable, download_target, fetch_pretrained

    tag = pretrained_tag or "openai"
    if weights == FROM_CACHE:
        found = find_cached_weights(arch, tag)
        if found is None:
            raise ClipFilterError(
                f"no cached weights for {arch} / {tag} in the open_clip or Hugging Face "
                f"cache; put a weights file in {folder_paths.get_folder_paths(CLIP_FOLDER)}", "weights")
        return found
    if weights == DOWNLOAD:
        folder = folder_paths.get_folder_paths(CLIP_FOLDER)[0]
        if fetch:
            return str(fetch_pretrained(arch, tag, folder))
        check_downloadable(arch, tag)
        return str(download_target(folder, arch, tag))
    path = folder_paths.get_full_path(CLIP_FOLDER, weights)
    if path is None:
        raise ClipFilterError(
            f"weights file {weights!r} not found in the '{CLIP_FOLDER}' model folder(s) "
            f"{folder_paths.get_folder_paths(CLIP_FOLDER)}; put the {arch} weights there "
            f"(e.g. {arch}.safetensors)", "weights")
    return path


class DTGenClipLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = folder_paths.get_filename_list(CLIP_FOLDER)
        return io.Schema(
            node_id=node_id("ClipLoader"),
            display_name="DTGen CLIP Loader (open_clip)",
            category=category("filtering"),
            description=("Loads an open_clip model from a local weights file in models/open_clip (or an "
                         "already-downloaded open_clip / Hugging Face cache entry). Downloads only when the weights entry "
                         "'(download pretrained_tag ...)' is chosen. Loaded "
                         "once and cached; placed and offloaded by ComfyUI's model management."),
            inputs=[
                io.String.Input("arch", default="ViT-B-32",
                                tooltip="open_clip architecture name, e.g. ViT-B-32, ViT-L-14, RN50."),
                io.Combo.Input("weights", options=[*files, FROM_CACHE, DOWNLOAD],
                               tooltip="Weights file in models/open_clip (.safetensors preferred; .pt/.bin "
                                       "are read with weights_only=True), the open_clip/HF cache, or a one-time "
                                       "download of pretrained_tag's weights to models/open_clip/<arch>-<tag>.safetensors."),
                io.String.Input("pretrained_tag", default="openai", optional=True,
                                tooltip="open_clip pretrained tag the file came from (e.g. openai, laion2b_s34b_b79k). It "
                                        "must match the file: it sets the preprocessing and QuickGELU (openai), and "
                                        "picks the cache entry and, with the download entry, what to fetch."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto", optional=True,
                               tooltip="Precision of the CLIP encoders. auto: fp16 on a GPU (fp32 if ComfyUI "
                                       "finds no fast fp16 there, or with --force-fp32); on the CPU bf16 only "
                                       "where it is native (AMX-BF16 / AVX-512 BF16), else fp32. fp16 on the CPU "
                                       "and bf16 where the hardware lacks it are refused. Scores and embeddings "
                                       "are float32 either way; each dataset record stores the precision and "
                                       "device that ran."),
            ],
            outputs=[DtgenClip.Output("clip", display_name="clip",
                         tooltip="The loaded open_clip model for DTGen CLIP Filter.")],
        )

    @classmethod
    async def validate_inputs(cls, arch, weights, pretrained_tag="openai", precision="auto") -> bool | str:
        return await off_loop(_check_loader, arch, weights, pretrained_tag, precision)   # may read a config, import open_clip

    @classmethod
    def execute(cls, arch, weights, pretrained_tag="openai", precision="auto") -> io.NodeOutput:
        from ..scoring.clip_model import cached_bundles, load_clip

        dtype = _precision(precision)   # before any download: a refused precision costs nothing
        path = resolve_weights(weights, arch, pretrained_tag, fetch=True)
        if weights in (FROM_CACHE, DOWNLOAD):   # these resolve an empty tag to openai's weights
            pretrained_tag = pretrained_tag or "openai"
        # loaded on the CPU, cast to the precision; the ModelPatcher moves it to the load device
        bundle = load_clip(arch, path, device="cpu", dtype=dtype, pretrained_tag=pretrained_tag or None)
        loaded = _LOADED.get(id(bundle))
        if loaded is None or loaded.bundle is not bundle:
            loaded = _LOADED[id(bundle)] = LoadedClip(bundle)
        live = {id(b) for b in cached_bundles()}
        for key in [k for k in _LOADED if k not in live]:   # evicted from the model cache: let go
            del _LOADED[key]
        return io.NodeOutput(loaded)


def _precision(requested) -> str:
    """The precision the encoders will run in on ComfyUI's text-encoder device ("fp32" | "fp16" |
    "bf16"); ClipFilterError naming what to pick instead for one that device cannot run."""
    import comfy.model_management as mm

    from ..scoring.errors import ClipFilterError
    from ..scoring.precision import device_type, resolve_precision

    device = mm.text_encoder_device()
    if (requested or "auto") == "auto" and getattr(mm, "FORCE_FP32", False):   # --force-fp32 covers the CLIP too
        return "fp32"
    try:
        return resolve_precision(requested or "auto", device, gpu_fp16=mm.should_use_fp16(device))
    except ClipFilterError as exc:
        if device_type(device) != "cpu" or mm.cpu_mode():
            raise
        raise ClipFilterError(f"{exc} (ComfyUI runs text encoders, this CLIP too, on the CPU here: "
                              f"--lowvram / --novram, or a GPU without fast fp16)") from None


# ------------------------------------------------------------------------------------ filter
def stack_images(items: list[ScoredItem]):
    """A preview batch; images of another size than the first are resized to it. No items: a
    silent ExecutionBlocker (message None), so the nodes fed by this output (a PreviewImage) do not
    run at all, rather than show a placeholder frame that looks like one image."""
    import torch

    if not items:
        return ExecutionBlocker(None)
    h, w = items[0].image.shape[:2]
    frames = []
    for it in items:
        t = torch.from_numpy(it.image[..., :3] if it.image.ndim == 3 else it.image[..., None].repeat(3, -1)).float()
        if t.shape[:2] != (h, w):
            t = torch.nn.functional.interpolate(t.permute(2, 0, 1)[None], size=(h, w), mode="bilinear")[0].permute(1, 2, 0)
        frames.append(t if _in_unit_range(t) else t.clamp(0, 1))   # clamp copies: only where it changes values
    if len(frames) == 1 and frames[0].is_contiguous():
        return frames[0][None]   # one image (one per queue run): a view, no 12 MB copy at 1024^2
    return torch.stack(frames)


def _in_unit_range(t) -> bool:
    """Every value already in [0, 1] (one read pass; NaN fails, so it is clamped as before)."""
    import torch

    lo, hi = torch.aminmax(t)
    return bool(lo >= 0) and bool(hi <= 1)


class DTGenClipFilter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("ClipFilter"),
            display_name="DTGen CLIP Filter",
            category=category("filtering"),
            description=("Scores every image of the run against its text with CLIP (batched, text embeddings "
                         "cached) and rejects, per class, images below an adaptive threshold computed over this "
                         "run plus the dataset's history. Outputs a scored batch for DTGen Dataset Writer."),
            is_input_list=True,
            inputs=[
                DtgenClip.Input("clip", tooltip="Model from DTGen CLIP Loader."),
                io.Image.Input("images", tooltip="Generated images (the list of one queue run)."),
                io.String.Input("positive", force_input=True,
                                tooltip="Positive prompt per image (from DTGen Prompt Sampler)."),
                io.String.Input("label", force_input=True, tooltip="Class label per image (from DTGen Prompt Sampler)."),
                io.Combo.Input("text_side", options=list(TEXT_SIDES), default="class_text",
                               tooltip="Text the image is scored against: the generating prompt, the class's "
                                       "CLIP text from the pack, or the mean of both."),
                *threshold_inputs(),
                io.String.Input("dataset_name", default="", optional=True,
                                tooltip="Dataset (under ComfyUI's output folder; use the Dataset Writer's "
                                        "dataset_name) whose stored scores join the population, so one-image runs "
                                        "still threshold adaptively. Empty = this run only."),
                io.String.Input("metadata", force_input=True, optional=True,
                                tooltip="Per-image metadata JSON from DTGen Prompt Sampler (class text, order, index)."),
                io.String.Input("negative", force_input=True, optional=True,
                                tooltip="Negative prompt per image (stored in the dataset)."),
                io.Int.Input("seed", force_input=True, optional=True, tooltip="Image seed per image (stored in the dataset)."),
                io.Float.Input("class_margin", default=-1.0, min=-1.0, max=1.0, step=0.005, optional=True,
                               tooltip="If >= 0: reject when another class's text beats the own class text by more "
                                       "than this margin (ordered classes: only classes 2+ levels away). -1 = off."),
                io.Float.Input("near_duplicate", default=0.0, min=0.0, max=1.0, step=0.005, optional=True,
                               tooltip="If > 0: reject an image whose embedding cosine with an accepted image of its "
                                       "class reaches this value. 0 = off."),
                io.Int.Input("batch_size", default=32, min=1, max=1024, optional=True,
                             tooltip="Images per CLIP forward pass."),
                dataset_input(),
                RealImagesType.Input("real_images", optional=True,
                                     tooltip="Optional: your real photos from DTGen Few-Shot Images. Each image gets a "
                                             "real-anchored score (mean of its top-k CLIP cosines to the real photos of "
                                             "its class) and a margin against the other classes' photos, stored beside "
                                             "the text score. The dataset's stored real photos count too."),
                *real_anchor_inputs("against the real photos of its class"),
            ],
            outputs=[
                ScoredBatchType.Output("scored", display_name="scored",
                                        tooltip="Images with scores, thresholds, decisions, reasons and "
                                                "embeddings, for DTGen Dataset Writer."),
                io.Image.Output("accepted", display_name="accepted",
                                tooltip="Accepted images (preview); nothing when none were accepted: the "
                                        "nodes it feeds do not run."),
                io.Image.Output("rejected", display_name="rejected",
                                tooltip="Rejected images (preview); nothing when none were rejected: the "
                                        "nodes it feeds do not run."),
                io.Image.Output("plot", display_name="plot",
                                tooltip="Per-class score histograms with the threshold line and counts."),
            ],
        )

    @classmethod
    def validate_inputs(cls, text_side, method, k, keep_percent, fixed_threshold, dataset_name=None,
                        decide_on=None) -> bool | str:
        # an input-list node gets every widget value as a one-element list; only the inputs named
        # here lose ComfyUI's own checks, and method_from checks each of them
        from ..common.validation import check_choice, linked
        from ..curation.thresholds import method_from

        values = [first(v) for v in (method, k, keep_percent, fixed_threshold)]
        try:
            if not linked(first(text_side)):
                check_choice("text_side", first(text_side), TEXT_SIDES)
            if decide_on is not None and not linked(first(decide_on)):
                check_choice("decide_on", first(decide_on), BASES)
            if not linked(*values):
                method_from(*values)
            dataset_dir(first(dataset_name, "") or "")
        except ValueError as exc:   # ClipFilterError, DatasetPathError
            return str(exc)
        return True

    @classmethod
    def fingerprint_inputs(cls, dataset_name=None, **_) -> str:
        # The decision depends on the dataset's history: rerun whenever it changed.
        from ..store.reader import history_fingerprint

        path = dataset_dir(first(dataset_name, ""))
        return history_fingerprint(path) if path is not None else ""

    @classmethod
    def execute(cls, clip, images, positive, label, text_side, method, k, keep_percent, fixed_threshold,
                min_count, dataset_name=None, metadata=None, negative=None, seed=None, class_margin=None,
                near_duplicate=None, batch_size=None, dataset=None, real_images=None, decide_on=None,
                real_top_k=None) -> io.NodeOutput:
        import comfy.utils
        import torch

        from ..curation.filtering import checks_from_widgets, filter_run, filter_summary, run_plot
        from ..curation.thresholds import method_from

        loaded: LoadedClip = first(clip)
        items = items_from_lists(as_list(images), as_list(positive), as_list(label), as_list(metadata),
                                 as_list(negative), as_list(seed))
        margin, near = checks_from_widgets(first(class_margin, -1.0), first(near_duplicate, 0.0))
        bar = comfy.utils.ProgressBar(len(items))
        ready = loaded.ready()   # on ComfyUI's device: its describe() names the device that ran
        batch, history = filter_run(
            ready, items, method_from(first(method), first(k), first(keep_percent), first(fixed_threshold)),
            text_side=first(text_side), min_count=first(min_count), margin=margin, near_dup=near,
            dataset_dir=dataset_dir(dataset_name_of(first(dataset), first(dataset_name, ""))),
            batch_size=first(batch_size, 32),
            progress=lambda done, total: bar.update_absolute(done, total),
            basis=first(decide_on, "text") or "text", realset=first(real_images, None),
            real_top_k=int(first(real_top_k, DEFAULT_TOP_K)))
        batch.config.update(text_side=first(text_side), clip=ready.describe(),
                            dataset=dataset_name_of(first(dataset), first(dataset_name, "")) or None)
        plot = torch.from_numpy(run_plot(batch, history).astype("float32") / 255.0)[None]
        accepted = [it for it in batch.items if it.accepted]
        rejected = [it for it in batch.items if not it.accepted]
        return io.NodeOutput(batch, stack_images(accepted), stack_images(rejected), plot,
                             ui=ui.PreviewText(filter_summary(batch)))



def _check_loader(arch, weights, pretrained_tag="openai", precision="auto") -> bool | str:
    from ..common.validation import linked
    from ..scoring.clip_model import ClipFilterError, check_arch

    try:
        if not linked(precision):
            _precision(precision)
        if linked(arch, weights, pretrained_tag):   # checked at execution
            return True
        path = resolve_weights(weights, arch, pretrained_tag)
        check_arch(arch, path)   # a custom architecture is described by a config beside its weights
    except ClipFilterError as exc:
        return str(exc)
    return True


NODES = [DTGenClipLoader, DTGenClipFilter]
