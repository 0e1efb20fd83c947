"""V3 adapter: ``DTGenFewShotImages`` (ComfyUI only; the logic is in nodes/fewshot/).

Where real image sets live: every sub-folder of the registered model folder ``dtgen_fewshot``
(``models/dtgen_fewshot/<set>/<label>/*.jpg``, mappable in ``extra_model_paths.yaml``) is listed by
its name, and every top-level sub-folder of ComfyUI's ``input/`` as ``input/<name>``. Only listed
names resolve: a typed path cannot reach any other folder.
"""
from __future__ import annotations

from comfy_api.latest import io, ui

from .comfy_paths import folder_sets, listing_fingerprint, register_folder, resolve_set
from .comfy_types import RealImagesType
from .off_loop import off_loop
from ..common.naming import category, node_id

FEWSHOT_FOLDER = "dtgen_fewshot"
NO_PACK = "none"
PLACEHOLDER = "my_photos"   # listed when no set exists yet, so the widget shows where sets go

register_folder(FEWSHOT_FOLDER)


def image_sets() -> dict[str, str]:
    return folder_sets(FEWSHOT_FOLDER)


def set_folder(name: str) -> str:
    from ..fewshot.imageset import FewShotError

    return resolve_set(FEWSHOT_FOLDER, name, "real image set", FewShotError)


def _caption_fallback(pack: str):
    from ..prompting.captions import caption_function

    if pack == NO_PACK:
        return caption_function(None)
    from .prompt_sampler import build_sampler

    return caption_function(build_sampler(pack, "balanced", 0).pack)


def real_set(folder, size, fit, pack, part, holdout, seed):
    """The chosen images with their captions: every check that needs no pixels."""
    from ..fewshot.imageset import scan
    from ..fewshot.realset import make_set

    root = set_folder(folder)
    return make_set(root, scan(root), _caption_fallback(pack), size=size, fit=fit, part=part,
                    holdout=holdout, seed=seed)


class DTGenFewShotImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from ..fewshot.pixels import FITS, MAX_SIZE, MIN_SIZE
        from ..fewshot.realset import PARTS
        from .prompt_sampler import pack_files

        sets = list(image_sets()) or [PLACEHOLDER]
        return io.Schema(
            node_id=node_id("FewShotImages"),
            display_name="DTGen Few-Shot Images",
            category=category("fewshot"),
            description=(
                "Your few real photos, in ImageFolder layout (<set>/<label>/*.jpg, in models/dtgen_fewshot or "
                "ComfyUI's input folder), as a training batch for the stock Train LoRA node: images fitted to one "
                "size, one caption per image (a .txt beside the image wins; otherwise the prompt pack's trigger "
                "and class text, so the LoRA learns the trigger the generation prompts use) and their CLIP "
                "conditioning. The real_images output lets the Dataset Writer add them to a dataset."),
            inputs=[
                io.Combo.Input("folder", options=sets, default=sets[0],
                               tooltip="Real image set: a folder of class folders (<label>/*.png|jpg|jpeg|webp|bmp, "
                                       "optional <image>.txt captions) in models/dtgen_fewshot, or input/<name> "
                                       "for one in ComfyUI's input folder."),
                io.Clip.Input("clip", tooltip="Text encoder that encodes the captions (the checkpoint's CLIP)."),
                io.Int.Input("size", default=1024, min=MIN_SIZE, max=MAX_SIZE, step=16,
                             tooltip="Training size in pixels: every image becomes size x size (SD3.5: 1024; "
                                     "512 trains about 4x faster)."),
                io.Combo.Input("fit", options=list(FITS), default="crop",
                               tooltip="crop: scale the short side to size and keep the centre; pad: scale the "
                                       "long side to size and pad with black (nothing cut off)."),
                io.Combo.Input("pack", options=[NO_PACK, *pack_files()], default=NO_PACK,
                               tooltip="Prompt pack for captions of images without a .txt: '<trigger>, <class "
                                       "clip_text>'. Every class folder must then be a class of the pack. none: "
                                       "'a photo of <label>'."),
                io.Combo.Input("part", options=list(PARTS), default="train",
                               tooltip="train: the images not held out; held_out: the held-out ones (for "
                                       "evaluation); all: every image, ignoring holdout."),
                io.Float.Input("holdout", default=0.0, min=0.0, max=0.9, step=0.05,
                               tooltip="Fraction of each class held out from training (seeded, stratified; "
                                       "every class keeps one image for training). 0 = train on all."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of the holdout split: the same seed holds out the same files."),
            ],
            outputs=[
                io.Image.Output("images", display_name="images",
                                tooltip="The chosen images as one batch (N x size x size), for VAE Encode -> Train LoRA."),
                io.Conditioning.Output("conditioning", display_name="conditioning",
                                       tooltip="One conditioning per image, from its caption: Train LoRA's positive."),
                io.String.Output("captions", display_name="captions", is_output_list=True,
                                 tooltip="The caption of each image, in batch order."),
                io.String.Output("labels", display_name="labels", is_output_list=True,
                                 tooltip="The class label of each image, in batch order."),
                RealImagesType.Output("real_images", display_name="real_images",
                                      tooltip="These images, for DTGen Dataset Writer's real_images input (stored "
                                              "as accepted, source: real, never filtered)."),
            ],
        )

    @classmethod
    async def validate_inputs(cls, folder, pack) -> bool | str:
        return await off_loop(_check_set, folder, pack)   # scans the set, reads captions

    @classmethod
    def fingerprint_inputs(cls, folder, **_) -> str:
        try:
            return listing_fingerprint(set_folder(folder))
        except ValueError:
            return ""

    @classmethod
    def execute(cls, folder, clip, size, fit, pack, part, holdout, seed) -> io.NodeOutput:
        import torch
        from comfy.model_management import throw_exception_if_processing_interrupted
        from comfy.utils import ProgressBar

        from ..fewshot.realset import load_batch, summary

        if clip is None:
            raise ValueError("DTGen Few-Shot Images: the clip input is empty (the checkpoint has no text "
                             "encoder?); wire a CLIP loader")
        realset = real_set(folder, size, fit, pack, part, holdout, seed)
        bar = ProgressBar(2 * len(realset.images))

        def tick():
            throw_exception_if_processing_interrupted()
            bar.update(1)

        pixels = torch.from_numpy(load_batch(realset, tick))
        conditioning = []
        for caption in realset.captions:
            tick()
            conditioning.extend(clip.encode_from_tokens_scheduled(clip.tokenize(caption)))
        from_txt = sum(1 for im in realset.images if im.caption)
        text = summary(realset, from_txt, "the prompt pack" if pack != NO_PACK else "'a photo of <label>'")
        return io.NodeOutput(pixels, conditioning, list(realset.captions), realset.labels, realset,
                             ui=ui.PreviewText(text))


def _check_set(folder, pack) -> bool | str:
    # only the set and the pack are checked at queue time (scanned, labels against the pack)
    from ..common.validation import linked
    from ..fewshot.imageset import FewShotError, scan
    from ..prompting.pack import PromptPackError

    if linked(folder, pack):
        return True
    try:
        root = set_folder(folder)
        fallback = _caption_fallback(pack)
        for label in sorted({im.label for im in scan(root) if not im.caption}):
            fallback(label)
    except (FewShotError, PromptPackError) as exc:
        return str(exc)
    return True


NODES = [DTGenFewShotImages]
