"""The demo's copy-paste step: a cutout set (``<set>/<label>/`` RGBA PNGs, or images with a
``<name>_mask.png``) and a background set (a flat folder of photos), each the user's own
(``--cutouts`` / ``--backgrounds``, checked and copied into the workspace within a budget) or drawn
placeholders: the plates and bowls of the few-shot placeholders alone on transparency (their alpha
is the drawn disc, exact) and a few table textures (wood grain, linen, gingham; deterministic).

Then the CPU-only template ``dtgen_copy_paste`` (DTGenCopyPaste -> CLIP filter -> Dataset Writer
with the instance masks) is queued on the demo's server by the queue client's run loop (the same one
``python -m runner queue`` uses), in the node's resume mode until every class has its quota of
accepted copy-paste images.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ..local_server import ROOT
from .photos import (
    MAX_BYTES,
    MAX_FILES,
    PER_CLASS,
    _fresh,
    check_budget,
    draw_cutout,
)

TEMPLATE = ROOT / "example_workflows" / "api" / "dtgen_copy_paste.json"
DATASET = "dtgen_demo_copy_paste"
CUTOUT_SETS, BACKGROUND_SETS = "cutouts", "backgrounds"   # <workspace>/<these>/<set>: the model folders
USER_CUTOUTS, PLACEHOLDER_CUTOUTS = "user_cutouts", "placeholder_cutouts"
USER_BACKGROUNDS, PLACEHOLDER_BACKGROUNDS = "user_backgrounds", "placeholder_tables"
CUTOUT_FOLDER, BACKGROUND_FOLDER = "dtgen_cutouts", "dtgen_backgrounds"   # registered by the node
CUTOUT_SIZE = 256        # drawn cutouts: the placeholder photos' objects, drawn sharper
BACKGROUND_SIZE = 320
TINY_SIZE = 256          # copy-paste output size with the tiny models (the template's 512 otherwise)
CUTOUTS_LAYOUT = "<folder>/<label>/ with RGBA PNGs (alpha = object) or <name>.jpg + <name>_mask.png"
BACKGROUNDS_LAYOUT = "a flat folder of photos (.jpg, .png, ...)"

# (file name, kind, colours): wood in two tones, linen, a blue gingham
TABLES = (("oak_table.png", "wood", ((182, 138, 94),)),
          ("walnut_table.png", "wood", ((116, 82, 58),)),
          ("linen_cloth.png", "linen", ((216, 206, 188),)),
          ("gingham_cloth.png", "gingham", ((236, 234, 228), (64, 92, 150))))


# -- drawn material -------------------------------------------------------------------------------
def placeholder_cutouts(dest, labels, per_class: int = PER_CLASS, size: int = CUTOUT_SIZE) -> Path:
    """``dest/<label>/<label>_NN.png``: the objects of the few-shot placeholders (same label and
    number, drawn at ``size``) as RGBA cutouts; ``dest`` is replaced."""
    dest = _fresh(Path(dest))
    for label in labels:
        (dest / label).mkdir()
        for i in range(per_class):
            draw_cutout(label, i, size).save(dest / label / f"{label}_{i:02d}.png")
    return dest


def _smooth(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a ``cells`` x ``cells`` grid, bicubic-upscaled."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def _weave(rng: np.random.Generator, size: int) -> np.ndarray:
    """Threads: a fine over-under pattern, threads of uneven thickness, slubs and pixel noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    pattern = 0.035 * np.sin(np.pi * x / 1.5) * np.sin(np.pi * y / 1.5)
    threads = rng.normal(0, 0.025, (size, 1)) + rng.normal(0, 0.025, (1, size))
    return pattern + threads + 0.03 * _smooth(rng, size, 6) + rng.normal(0, 0.02, (size, size))


def draw_table(kind: str, colours, seed: int, size: int = BACKGROUND_SIZE) -> Image.Image:
    """A table texture (``wood``: planks with warped grain; ``linen``: woven cloth; ``gingham``: a
    checked cloth of two colours): the same arguments always give the same pixels."""
    rng = np.random.default_rng(seed)
    base = np.asarray(colours[0], np.float32) / 255
    if kind == "wood":
        y = np.mgrid[0:size, 0:size][0].astype(np.float32) / size
        planks = int(rng.integers(3, 5))
        plank = np.minimum((y * planks).astype(int), planks - 1)
        phase = rng.uniform(0, 1, planks)[plank]
        warp = 0.06 * _smooth(rng, size, 4) + 0.01 * _smooth(rng, size, 16)
        grain = (0.5 + 0.5 * np.sin(2 * np.pi * ((y + warp) * rng.uniform(16, 24) + phase))) ** 3
        shade = (1 - 0.22 * grain + rng.uniform(-0.07, 0.07, planks)[plank]
                 + 0.04 * _smooth(rng, size, 8) + rng.normal(0, 0.015, (size, size)))
        seam = np.abs(y * planks - np.round(y * planks)) * size / planks < 1.0
        shade[seam & (y > 0.01) & (y < 0.99)] *= 0.55
        rgb = base * shade[..., None]
    elif kind == "linen":
        rgb = base * (1 + _weave(rng, size))[..., None]
    elif kind == "gingham":
        y, x = np.mgrid[0:size, 0:size]
        band = size // int(rng.integers(8, 12))
        coloured = ((x // band) % 2).astype(np.float32) + ((y // band) % 2)   # 0, 1 or 2 stripes cross
        mix = (coloured / 2)[..., None] * 0.85
        rgb = (base * (1 - mix) + np.asarray(colours[1], np.float32) / 255 * mix) * (1 + _weave(rng, size))[..., None]
    else:
        raise ValueError(f"table kind {kind!r}: wood, linen or gingham")
    return Image.fromarray(np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8))


def placeholder_backgrounds(dest, size: int = BACKGROUND_SIZE) -> Path:
    """``dest/<table>.png``: the drawn table textures of ``TABLES``; ``dest`` is replaced."""
    dest = _fresh(Path(dest))
    for seed, (name, kind, colours) in enumerate(TABLES):
        draw_table(kind, colours, seed, size).save(dest / name)
    return dest


# -- the user's material ----------------------------------------------------------------------------
def _refused(flag: str, src: Path, exc: Exception) -> ValueError:
    where = "" if getattr(exc, "path", None) is not None else f" {src}"   # file errors name the file
    return ValueError(f"{flag}{where}: {exc}")


def copy_cutout_set(src, dest, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES) -> dict[str, int]:
    """Copy the cutout set ``src`` to ``dest`` (replaced) once ``load_cutouts`` accepts it; returns
    ``{label: cutouts}``. Refused with one line naming ``--cutouts``: over the budget, or a set the
    copy-paste node would refuse (no transparency and no mask, empty mask, symlink, ...)."""
    from ...nodes.fewshot.imageset import FewShotError
    from ...nodes.synthesis.cutouts import load_cutouts

    src = Path(src).expanduser()
    check_budget(src, "--cutouts", CUTOUTS_LAYOUT, max_files, max_bytes, "a few cutouts per class are enough")
    try:
        found = load_cutouts(src, max_files=max_files)
    except FewShotError as e:   # SynthesisError included
        raise _refused("--cutouts", src, e) from None
    dest = _fresh(Path(dest))
    for label, cutouts in found.items():
        (dest / label).mkdir()
        for c in cutouts:
            for path in (c.path, c.mask_path):
                if path is not None:
                    shutil.copyfile(path, dest / label / path.name)
    return {label: len(c) for label, c in found.items()}


def copy_background_set(src, dest, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES) -> int:
    """Copy the images of the flat folder ``src`` to ``dest`` (replaced) once ``load_backgrounds``
    accepts it; returns how many. Refused with one line naming ``--backgrounds``."""
    from ...nodes.synthesis.backgrounds import load_backgrounds
    from ...nodes.synthesis.errors import SynthesisError

    src = Path(src).expanduser()
    check_budget(src, "--backgrounds", BACKGROUNDS_LAYOUT, max_files, max_bytes, "a few photos are enough")
    try:
        found = load_backgrounds(src, max_files=max_files)
    except SynthesisError as e:
        raise _refused("--backgrounds", src, e) from None
    dest = _fresh(Path(dest))
    for entry in found.entries:
        shutil.copyfile(entry.path, dest / entry.path.name)
    return len(found)


def prepare_sets(workspace: Path, cutouts, backgrounds, labels, say) -> tuple[Path, Path]:
    """(cutout set, background set) under ``<workspace>/cutouts`` and ``<workspace>/backgrounds``:
    copies of the user's folders, else drawn placeholders (cutouts for ``labels``)."""
    if cutouts:
        cut = workspace / CUTOUT_SETS / USER_CUTOUTS
        n = copy_cutout_set(cutouts, cut)
        say(f"copied {sum(n.values())} cutout(s) in {len(n)} class(es) from {cutouts} to {cut}")
    else:
        cut = placeholder_cutouts(workspace / CUTOUT_SETS / PLACEHOLDER_CUTOUTS, labels)
        say(f"no --cutouts: drew {PER_CLASS} PLACEHOLDER cutouts per class in {cut} (the placeholder plates and "
            "bowls on transparency, exact alpha); pass --cutouts DIR with <label>/ RGBA PNGs of your own")
    if backgrounds:
        bg = workspace / BACKGROUND_SETS / USER_BACKGROUNDS
        say(f"copied {copy_background_set(backgrounds, bg)} background(s) from {backgrounds} to {bg}")
    else:
        bg = placeholder_backgrounds(workspace / BACKGROUND_SETS / PLACEHOLDER_BACKGROUNDS)
        say(f"no --backgrounds: drew {len(TABLES)} PLACEHOLDER table textures (wood, linen, gingham) in {bg}; "
            "pass --backgrounds DIR with photos of your own tables")
    return cut, bg


# -- the template and its run ----------------------------------------------------------------------
def copy_paste_graph(cutout_set: str, background_set: str, quota: int, clip: dict | None = None,
                     size: int | None = None, template: Path = TEMPLATE) -> dict:
    """The template for the demo: its sets, its dataset in resume mode with ``quota`` per class, the
    CLIP loader's inputs of the main workflow (``clip``), and ``size`` when given."""
    graph = json.loads(Path(template).read_text(encoding="utf-8"))
    for node in graph.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "DTGenCopyPaste":
            inputs.update(cutouts=cutout_set, backgrounds=background_set, dataset_name=DATASET,
                          quota_per_class=int(quota), classes="", start_index=0)
            if size:
                inputs["size"] = int(size)
        elif kind in ("DTGenClipFilter", "DTGenDatasetWriter"):
            inputs["dataset_name"] = DATASET
        if kind == "DTGenClipLoader" and clip:
            inputs.update({k: v for k, v in clip.items() if not isinstance(v, list)})
    return graph


def clip_inputs(graph: dict) -> dict:
    """The literal inputs of a graph's DTGen CLIP loader (arch, weights, pretrained_tag)."""
    for node in graph.values():
        if node["class_type"] == "DTGenClipLoader":
            return {k: v for k, v in node["inputs"].items() if not isinstance(v, list)}
    return {}
