"""Generate the UI-format example workflows (example_workflows/<name>.json) from their API twins.

The template browser of ComfyUI loads UI-format workflows; the API twins in example_workflows/api/
are what the HTTP API and the integration tests queue. This script turns each twin into the UI
format the frontend (1.27) itself writes, with node definitions read from a running server's
``/object_info``, a left-to-right layout and Markdown notes saying which file goes where:

    python tools/make_ui_workflows.py --url http://127.0.0.1:8188          # write the files
    python tools/make_ui_workflows.py --url http://127.0.0.1:8188 --check  # exit 1 when stale

How the frontend lays out a node (checked in its sources, ``litegraphService.ts``, ``useIntWidget.ts``):
- inputs are the definition's required then optional inputs in ``input_order``; hidden ones are not shown;
- an INT/FLOAT/STRING/BOOLEAN/COMBO input without ``forceInput`` is a widget, and still gets an input
  socket (``widget: {name}``); a link into it keeps the widget and its value in ``widgets_values``;
- ``node.inputs`` lists the socket-only inputs first, then the widget inputs, each in definition order;
- an INT with ``control_after_generate`` (or, lacking the flag, named ``seed``/``noise_seed``) is
  followed by a ``control_after_generate`` widget whose value ("fixed", "randomize", ...) is stored too.

``ui_to_api`` is the reverse (what the frontend's graphToPrompt produces); tests use both.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "example_workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NOTE_TYPES = {"Note", "MarkdownNote"}  # frontend-only nodes: never sent to the server
SEED_CONTROL = "fixed"  # datasets must be reproducible: never re-randomise a seed after a run


class WorkflowConvertError(ValueError):
    """A graph that cannot be converted; the message names the node and input."""


# ------------------------------------------------------------------------------- node definitions
@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str          # "COMBO" for a list of options, else the declared type
    options: dict
    widget: bool       # shown as a widget (and serialised in widgets_values)
    control: bool      # followed by a control_after_generate widget


def input_specs(definition: dict) -> list[InputSpec]:
    """A node definition's visible inputs in the frontend's order (required, then optional)."""
    specs, order = [], definition.get("input_order", {})
    for group in ("required", "optional"):
        declared = definition.get("input", {}).get(group, {})
        for name in order.get(group, list(declared)):
            if name not in declared:
                continue
            raw_type, *rest = declared[name]
            options = (rest[0] if rest else None) or {}
            kind = "COMBO" if isinstance(raw_type, list) else raw_type
            widget = kind in WIDGET_TYPES and not options.get("forceInput", False)
            default_control = kind == "INT" and name in ("seed", "noise_seed")
            control = widget and bool(options.get("control_after_generate", default_control))
            specs.append(InputSpec(name, kind, options, widget, control))
    return specs


def socket_order(specs: list[InputSpec]) -> list[InputSpec]:
    """Order of ``node.inputs``: socket-only inputs first, then widget inputs."""
    return [s for s in specs if not s.widget] + [s for s in specs if s.widget]


def _definition(object_info: dict, class_type: str, where: str) -> dict:
    if class_type not in object_info:
        raise WorkflowConvertError(f"{where}: node type {class_type!r} is not in /object_info "
                                   "(is the pack loaded in this ComfyUI?)")
    return object_info[class_type]


# ----------------------------------------------------------------------------------- layout
SLOT_H, WIDGET_H, MULTILINE_H, TITLE_PAD = 22, 24, 110, 14
COLUMN_GAP, ROW_GAP = 70, 50
NODE_WIDTH = {"DTGenClipFilter": 360, "DTGenPromptSampler": 340, "KSampler": 320, "PreviewImage": 380,
              "CLIPTextEncode": 300, "DTGenDatasetWriter": 340, "CheckpointLoaderSimple": 380,
              "DTGenTrainCheckpointLoader": 380, "LoraLoader": 360}
PREVIEW_H = 300


def node_size(class_type: str, definition: dict) -> list[int]:
    specs = input_specs(definition)
    sockets = len([s for s in specs if not s.widget])
    widgets = [s for s in specs if s.widget]
    rows = max(sockets, len(definition.get("output", [])))
    height = rows * SLOT_H + TITLE_PAD
    for s in widgets:
        height += MULTILINE_H if s.type == "STRING" and s.options.get("multiline") else WIDGET_H
        height += WIDGET_H if s.control else 0
    if class_type == "PreviewImage":
        height = PREVIEW_H
    return [NODE_WIDTH.get(class_type, 300), height]


def columns(api: dict) -> dict[str, int]:
    """Column of each node: longest path from a source; a source sits just left of its first consumer."""
    deps = {nid: [v[0] for v in node["inputs"].values() if _is_link(v)] for nid, node in api.items()}
    col: dict[str, int] = {}

    def depth(nid: str, stack=()) -> int:
        if nid in stack:
            raise WorkflowConvertError(f"node {nid}: the graph has a cycle")
        if nid not in col:
            col[nid] = 1 + max((depth(d, stack + (nid,)) for d in deps[nid]), default=-1)
        return col[nid]

    for nid in api:
        depth(nid)
    for nid in api:
        if not deps[nid]:
            consumers = [col[c] for c, ds in deps.items() if nid in ds]
            if consumers:
                col[nid] = max(0, min(consumers) - 1)
    return col


def layout(api: dict, sizes: dict[str, list[int]], top: int = 0) -> dict[str, list[int]]:
    col = columns(api)
    pos, x = {}, 0
    for c in sorted(set(col.values())):
        members = sorted((nid for nid in api if col[nid] == c), key=int)
        y = top
        for nid in members:
            pos[nid] = [x, y]
            y += sizes[nid][1] + ROW_GAP
        x += max(sizes[nid][0] for nid in members) + COLUMN_GAP
    return pos


def place_notes(sizes: list[list[int]], nodes: list[dict]) -> list[list[int]]:
    """Notes side by side from the left edge, under the nodes they would otherwise cover."""
    width = sum(w for w, _ in sizes) + COLUMN_GAP * (len(sizes) - 1)
    below = [n["pos"][1] + n["size"][1] for n in nodes if n["pos"][0] < width]
    x, y, out = 0, max(below, default=0) + ROW_GAP + 30, []  # + the title bar above a node's pos
    for w, _ in sizes:
        out.append([x, y])
        x += w + COLUMN_GAP
    return out


# ------------------------------------------------------------------------------ API -> UI
def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _order(api: dict) -> dict[str, int]:
    col = columns(api)
    return {nid: i for i, nid in enumerate(sorted(api, key=lambda n: (col[n], int(n))))}


def api_to_ui(api: dict, object_info: dict, notes: list[dict] = (), models: dict | None = None) -> dict:
    """A UI-format (version 0.4) workflow equivalent to the API-format graph ``api``.

    ``notes``: MarkdownNote nodes as ``{"title", "text", "size"}``, placed under the graph's left part;
    ``models``: class_type -> ``{"name", "url", "directory"}``, which the frontend offers to download
    when the file is missing.
    """
    sizes = {nid: node_size(n["class_type"], _definition(object_info, n["class_type"], f"node {nid}"))
             for nid, n in api.items()}
    positions = layout(api, sizes)
    order = _order(api)
    nodes, links = {}, []

    for nid, node in api.items():
        kind, where = node["class_type"], f"node {nid} ({node['class_type']})"
        definition = _definition(object_info, kind, where)
        specs = input_specs(definition)
        unknown = set(node["inputs"]) - {s.name for s in specs}
        if unknown:
            raise WorkflowConvertError(f"{where}: inputs {sorted(unknown)} are not in its definition")
        values = []
        for s in specs:
            if not s.widget:
                continue
            value = node["inputs"].get(s.name, s.options.get("default"))
            if _is_link(value):  # a linked widget keeps its (unused) value; the definition's default
                value = s.options.get("default", "" if s.type == "STRING" else 0)
            values.append(value)
            if s.control:
                values.append(SEED_CONTROL)
        ui = {
            "id": int(nid), "type": kind, "pos": positions[nid], "size": sizes[nid], "flags": {},
            "order": order[nid], "mode": 0,
            "inputs": [{"name": s.name, "type": s.type, **({"widget": {"name": s.name}} if s.widget else {}),
                        "link": None} for s in socket_order(specs)],
            "outputs": [{"name": name, "type": typ, "links": []}
                        for name, typ in zip(definition.get("output_name", []), definition.get("output", []))],
            "properties": {"Node name for S&R": kind},
            "widgets_values": values,
        }
        title = node.get("_meta", {}).get("title")
        if title and title != definition.get("display_name", kind):
            ui["title"] = title
        if models and kind in models:
            ui["properties"]["models"] = [models[kind]]
        nodes[nid] = ui

    for nid, node in api.items():  # links in a stable order: by target node, then input order
        slots = {inp["name"]: i for i, inp in enumerate(nodes[nid]["inputs"])}
        for name in [inp["name"] for inp in nodes[nid]["inputs"]]:
            value = node["inputs"].get(name)
            if not _is_link(value):
                continue
            src, out = value
            if src not in nodes or out >= len(nodes[src]["outputs"]):
                raise WorkflowConvertError(f"node {nid} input {name!r}: no output {out} on node {src}")
            link_id = len(links) + 1
            typ = nodes[src]["outputs"][out]["type"]
            links.append([link_id, int(src), out, int(nid), slots[name], typ])
            nodes[nid]["inputs"][slots[name]]["link"] = link_id
            nodes[src]["outputs"][out]["links"].append(link_id)

    last_id = max(int(n) for n in api)
    all_nodes = sorted(nodes.values(), key=lambda n: n["id"])
    note_pos = place_notes([n["size"] for n in notes], list(nodes.values()))
    for i, (note, pos) in enumerate(zip(notes, note_pos), start=1):
        all_nodes.append({
            "id": last_id + i, "type": "MarkdownNote", "pos": pos, "size": note["size"], "flags": {},
            "order": len(api) + i - 1, "mode": 0, "inputs": [], "outputs": [], "properties": {},
            "widgets_values": [note["text"]], "color": "#432", "bgcolor": "#653",
            **({"title": note["title"]} if note.get("title") else {}),
        })
    return {
        "last_node_id": last_id + len(notes), "last_link_id": len(links), "nodes": all_nodes, "links": links,
        "groups": [], "config": {}, "extra": {}, "version": 0.4,  # no extra.ds: the editor fits the view
    }


# ------------------------------------------------------------------------------ UI -> API
def ui_to_api(ui: dict, object_info: dict) -> dict:
    """The API-format graph of a UI-format workflow (notes dropped; widget values by input name)."""
    links = {link[0]: link for link in ui.get("links", [])}
    api = {}
    for node in ui["nodes"]:
        kind = node["type"]
        if kind in NOTE_TYPES:
            continue
        where = f"node {node['id']} ({kind})"
        specs = input_specs(_definition(object_info, kind, where))
        linked = {}
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                if inp["link"] not in links:
                    raise WorkflowConvertError(f"{where} input {inp['name']!r}: link {inp['link']} is not in 'links'")
                _, src, slot, dst, _, _ = links[inp["link"]]
                if dst != node["id"]:
                    raise WorkflowConvertError(f"{where} input {inp['name']!r}: link {inp['link']} ends at node {dst}")
                linked[inp["name"]] = [str(src), slot]
        values = list(node.get("widgets_values", []))
        expected = sum(1 + s.control for s in specs if s.widget)
        if len(values) != expected:
            raise WorkflowConvertError(f"{where}: {len(values)} widget values, the definition has {expected} widgets")
        inputs = {}
        for s in specs:
            if s.widget:
                value = values.pop(0)
                if s.control:
                    values.pop(0)
                inputs[s.name] = linked.get(s.name, value)
            elif s.name in linked:
                inputs[s.name] = linked[s.name]
        entry = {"class_type": kind, "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        api[str(node["id"])] = entry
    return api


def with_defaults(api: dict, object_info: dict) -> dict:
    """``api`` with every omitted widget input set to its default, as the node receives it; two
    graphs that differ only by spelled-out defaults compare equal after this."""
    out = {}
    for nid, node in api.items():
        inputs = dict(node["inputs"])
        for s in input_specs(_definition(object_info, node["class_type"], f"node {nid}")):
            if s.widget and s.name not in inputs and "default" in s.options:
                inputs[s.name] = s.options["default"]
        out[nid] = {"class_type": node["class_type"], "inputs": inputs}
    return out


# --------------------------------------------------------------------------- the shipped examples
CKPT_NAME = "sd3.5_large_fp8_scaled.safetensors"
CKPT = {"name": CKPT_NAME, "url": f"https://huggingface.co/Comfy-Org/stable-diffusion-3.5-fp8/resolve/main/{CKPT_NAME}",
        "directory": "checkpoints"}

FILES_NOTE = """## Model files: where they go

| file | folder |
|---|---|
| `sd3.5_large_fp8_scaled.safetensors`: SD3.5 Large with its text encoders inside | `models/checkpoints` |
{lora_row}| `ViT-B-32.safetensors`: open_clip ViT-B/32 weights (OpenAI) for the CLIP filter | `models/open_clip` |

Nothing is downloaded by DTGen. Another open_clip model: set `arch` and `pretrained_tag` on
**DTGen CLIP Loader** to match its file.

**Checkpoint without text encoders** (e.g. `sd3.5_large.safetensors`)? Add a **TripleCLIPLoader**
with `clip_l.safetensors`, `clip_g.safetensors` and `t5xxl_fp16.safetensors` (or
`t5xxl_fp8_e4m3fn.safetensors`) from `models/text_encoders` and wire its CLIP output where the
checkpoint's CLIP output goes now{clip_target}.
"""

LORA_ROW = ("| `dtgen_tableware_lora.safetensors`: your LoRA, trained on a few real photos "
            "(trigger `dtgtableware`, see `prompts/tableware.yaml`) | `models/loras` |\n")

RUN_NOTE = """## How it runs

1. **DTGen Prompt Sampler** draws `count` items from the `{pack}` prompt pack: prompt, negative,
   label, seed and metadata per item. `count` > 1 fans out `count` generations in one queue run.
2. Stock SD3.5 nodes{lora} render each item.
3. **DTGen CLIP Filter** scores each image against its class text; per-class thresholds
   (`mean_std`: mean − k·std) use this run **and** the dataset's earlier runs.
4. **DTGen Dataset Writer** stores accepted images in `output/{dataset}/images/<label>/`,
   rejected ones in `output/{dataset}/rejected/<label>/`, and a line per image in `manifest.jsonl`.

Keep queueing (or set a batch count): the sampler is in resume mode (`dataset_name` =
`{dataset}`, `quota_per_class` = {quota}), so every run makes the next items the dataset still
lacks, carries on after a crash or restart, and stops quietly once every class has {quota}
accepted images. A new `seed` starts a new item sequence (new items, not duplicates).
"""

PHOTOS_NOTE = """## Your real photos: where they go

Put 20-50 photos per class in **`models/dtgen_fewshot/{photo_set}/<label>/`**, one folder per
class, named like the classes of the `{pack}` prompt pack (`plate_clean/`, `plate_heavily_dirty/`,
...); `.jpg .jpeg .png .webp .bmp`. Or put the set in ComfyUI's `input/` folder and choose
`input/<name>`. Press **R** (refresh) and choose the set on **DTGen Few-Shot Images**.

Captions: a `.txt` beside a photo (`plate_03.txt`) is used as it is; otherwise the node writes
`<trigger>, <class clip_text>` from the pack (`dtgtableware, ...`), so the LoRA learns the
trigger token the generation prompts use. `holdout` keeps a seeded share of each class out of
training (`part` = `held_out` gives them back, e.g. for evaluation).

| file | folder |
|---|---|
| `sd3.5_large_fp8_scaled.safetensors`: SD3.5 Large with its text encoders inside | `models/checkpoints` |
{clip_row}
**Checkpoint without text encoders**? Add a **TripleCLIPLoader** (`clip_l`, `clip_g`, `t5xxl`
from `models/text_encoders`) and wire its CLIP output to the few-shot node's `clip`{clip_target}.
"""

CLIP_ROW = ("| `ViT-B-32.safetensors`: open_clip ViT-B/32 weights (OpenAI) for the CLIP filter | "
            "`models/open_clip` |\n")

TRAIN_NOTE = """## Training: settings and where the LoRA lands

**DTGen Checkpoint Loader (train + generate)** loads the checkpoint once: stock **Train LoRA**
(ComfyUI's experimental training nodes) trains its `train_model` output, generation uses `model`.
For `sd3.5_*_fp8_scaled` files each layer is dequantized (weight x scale) before the LoRA, as
LoraLoader applies it at generation, and the fp8 weights stay fp8 in memory; bf16/fp16 files train
as stored. A file Train LoRA cannot train is refused when you queue, naming it and what to use.
Starting points for SD3.5 Large with ~40 photos on a 24-80 GB GPU: `size` 1024 (512 trains ~4x
faster), `rank` 16, `learning_rate` 1e-4, `steps` 600 with `grad_accumulation_steps` 4 (about 60
passes over 40 photos), `training_dtype`/`lora_dtype` bf16, `gradient_checkpointing` on. These are
not measured on SD3.5 Large here (the pack's tests train a tiny SD3 on CPU in fp32); watch the
loss graph and the samples. On a CPU, or a GPU without bf16, choose fp32.

**Save LoRA Weights** writes `output/loras/{prefix}_<steps>_steps_00001_.safetensors`.
LoraLoader lists `models/loras` only: to pick the new LoRA up in the generation templates without
copying it, map ComfyUI's output `loras` folder in `extra_model_paths.yaml`:

```yaml
dtgen_trained:
    base_path: /path/to/ComfyUI/output
    loras: loras
```

then restart ComfyUI (or copy the file to `models/loras`) and choose it on **LoraLoader**.
"""

TRAIN_GENERATE_NOTE = """## One queue run: train, then generate

**Load LoRA Model** applies the LoRA just trained (no file round trip) and the DTGen nodes make
the dataset as in the generation templates: the sampler draws prompts from `{pack}`, the CLIP
filter scores each image, the writer stores accepted / rejected images in `output/{dataset}/`.
The writer's `real_images` input adds your photos as accepted images marked `source: real`
(stored once, never filtered, not counted in the quota). The filter's `real_images` input gives
each image a real-anchored score beside its text score (how close it is to your photos of its
class); set the filter's `decide_on` to `real` or `both` to filter on it (default `text`).

Queue again and again: while ComfyUI runs, the trained LoRA is cached (its inputs are unchanged),
so only the next items are generated; after a restart the LoRA is trained again. For long runs,
train once with `dtgen_sd35_train_lora` and generate with `dtgen_sd35_lora`.
"""

CUTOUTS_NOTE = """## Your cutouts and backgrounds: where they go

| what | folder |
|---|---|
| cutouts: `<label>/*.png` with transparency (alpha = the object), or `<label>/<name>.jpg` + `<name>_mask.png` (white = object) | `models/dtgen_cutouts/{cutouts}/` |
| backgrounds: photos of the scene without objects, any size (centre-cropped) | `models/dtgen_backgrounds/{backgrounds}/` |
| `ViT-B-32.safetensors`: open_clip ViT-B/32 weights (OpenAI) for the CLIP filter | `models/open_clip` |
{checkpoint_rows}
Class folders are named like the classes (`plate_clean/`, ...){pack_hint}. 5 cutouts per class
already work (the copy-paste study: 94.8 % test accuracy from 5 cutouts per class vs 82.2 % for
Stable Diffusion alone). Or use `input/<name>` for sets in ComfyUI's input folder; press **R** to
refresh the lists.
"""

CHECKPOINT_ROWS = """| `sd3.5_large_fp8_scaled.safetensors`: SD3.5 Large with its text encoders inside | `models/checkpoints` |
| `dtgen_tableware_lora.safetensors`: your LoRA (trigger `dtgtableware`) | `models/loras` |

**Checkpoint without text encoders**? Add a **TripleCLIPLoader** (`clip_l`, `clip_g`, `t5xxl` from
`models/text_encoders`) and wire its CLIP output to LoraLoader's `clip` input.
"""

NO_CHECKPOINT = """No diffusion model, no GPU: this graph runs on any CPU. (For SD3.5 images in the same dataset, see
`dtgen_hybrid_copy_paste`: its notes list the checkpoint, models/checkpoints, and the TripleCLIPLoader
with clip_l, clip_g and t5xxl for checkpoints without text encoders.)
"""

COPY_PASTE_NOTE = """## How it runs

1. **DTGen Copy-Paste** pastes {objects} cutout(s) of one class on a background per image, at a random
   scale, rotation, flip and position (no overlap), with feathered edges and an exact instance mask
   per object. Item i is a pure function of the files, the settings, the seed and i.
2. **DTGen CLIP Filter** scores each image against its class text (`a photo of <label>`).
3. **DTGen Dataset Writer** stores images in `output/{dataset}/images/<label>/`, the masks in
   `output/{dataset}/masks/<label>/` and boxes in `manifest.jsonl`.
4. **Finalize** (`python -m runner finalize output/{dataset} --export coco,yolo`, or the DTGen Dataset
   Finalize node) writes COCO `annotations/instances.json` and YOLO `labels/` + `data.yaml`.

Resume mode: queue again and again; each run makes the next `count` items the dataset lacks until
every class has {quota} copy-paste images.
"""

HYBRID_NOTE = """## How it runs: SD3.5 + copy-paste in one dataset

Each queue run makes one SD3.5 item (prompt sampler -> LoRA -> KSampler -> CLIP filter -> writer)
and one copy-paste item (DTGen Copy-Paste -> writer, with its masks), into `output/{dataset}/`.
Each source fills **its own** per-class quota ({sd_quota} SD3.5 + {cp_quota} copy-paste per class, the
study's 100 + 100 hybrid): the sampler counts SD3.5 images only, Copy-Paste counts copy-paste
images only, so the ratio holds whatever order they finish in. `source` in the manifest and in
`images/metadata.jsonl` says which is which (`generated` | `copy_paste`). Change the ratio with the
two `quota_per_class` widgets; `count` sets how many of each per queue run. The copy-paste images
keep their instance masks: Finalize (`python -m runner finalize output/{dataset}`) exports COCO
`annotations/` and YOLO `labels/` for them.
"""

DEFECT_FILES_NOTE = """## Files: where they go

| file | folder |
|---|---|
| `sd3.5_large_fp8_scaled.safetensors`: SD3.5 Large with its text encoders inside | `models/checkpoints` |
| `dtgen_steel_lora.safetensors`: your LoRA on a few real defect photos (trigger `dtgsteel`, see `prompts/steel_defects.yaml`) | `models/loras` |
| `ViT-B-32.safetensors`: open_clip ViT-B/32 weights (OpenAI) for the CLIP filter | `models/open_clip` |
| surfaces: photos of steel without the defect (or with other defects), any size | `models/dtgen_backgrounds/{surfaces}/` |
| optional real defect masks (PNG, white = defect) | `models/dtgen_masks/<set>/` |

**Checkpoint without text encoders**? Add a **TripleCLIPLoader** (`clip_l`, `clip_g`, `t5xxl` from
`models/text_encoders`) and wire its CLIP output to LoraLoader's `clip` input.
"""

DEFECT_NOTE = """## How it runs (DefFiller's recipe)

1. **DTGen Prompt Sampler** draws a defect class and its prompt; **DTGen Mask Sampler** draws a
   mask of that class's shape (scratch, crack, blob, patch, pits; never thinner than
   `min_width` = 10 px) and picks a surface.
2. **VAE Encode** + **Set Latent Noise Mask** + **KSampler** inpaint only inside the mask (SD3.5 has
   no inpainting model: the noise mask is the stock route that works with any model; DefFiller
   keeps guidance low, **cfg 2-4**, so the defect stays faithful and the background consistent).
   **ImageCompositeMasked** puts the untouched surface back outside the mask.
3. **DTGen CLIP Filter** checks the class; **DTGen Mask IoU Filter** keeps the image only if the
   defect landed in its mask: IoU(mask, prediction) >= **0.6** (DefFiller). Without a segmenter
   wired to `predicted_masks`, a change detector (surface vs result) predicts the mask.
4. **DTGen Dataset Writer** stores image + mask pairs in `output/{dataset}/`; Finalize exports
   COCO and YOLO labels (`python -m runner finalize output/{dataset}`).

DefFiller helps most with <= 100 real samples per defect class; defects under 10 px wide and busy
textures need more targeted masks (lower `scale_max`, `shapes` lines, or your real masks).
"""

WORKFLOWS = {
    "dtgen_sd35_lora": dict(pack="tableware", lora=True),
    "dtgen_sd35_fruits": dict(pack="fruits", lora=False),
    "dtgen_sd35_lora_batch": dict(pack="tableware", lora=True),
    "dtgen_sd35_train_lora": dict(pack="tableware", train=True),
    "dtgen_sd35_train_generate": dict(pack="tableware", train=True, generate=True),
    "dtgen_copy_paste": dict(pack="tableware", copy_paste=True),
    "dtgen_hybrid_copy_paste": dict(pack="tableware", copy_paste=True, hybrid=True),
    "dtgen_sd35_defect_inpaint": dict(pack="steel_defects", defects=True),
}


def _defect_notes(api: dict) -> list[dict]:
    masks = next(n["inputs"] for n in api.values() if n["class_type"] == "DTGenMaskSampler")
    dataset = next(n["inputs"]["dataset_name"] for n in api.values() if n["class_type"] == "DTGenDatasetWriter")
    return [{"title": "Read me: model files, surfaces, masks", "text": DEFECT_FILES_NOTE.format(surfaces=masks["surfaces"]),
             "size": [620, 300]},
            {"title": "Read me: how it runs", "text": DEFECT_NOTE.format(dataset=dataset), "size": [620, 320]}]


def _copy_paste_notes(spec: dict, api: dict) -> list[dict]:
    cp = next(n["inputs"] for n in api.values() if n["class_type"] == "DTGenCopyPaste")
    hybrid = spec.get("hybrid", False)
    files = CUTOUTS_NOTE.format(cutouts=cp["cutouts"], backgrounds=cp["backgrounds"],
                                checkpoint_rows=CHECKPOINT_ROWS if hybrid else "\n" + NO_CHECKPOINT,
                                pack_hint=f" and like the `{spec['pack']}` prompt pack's classes" if hybrid else "")
    objects = (f"{cp['objects_min']}" if cp["objects_min"] == cp["objects_max"]
               else f"{cp['objects_min']}-{cp['objects_max']}")
    if hybrid:
        sd_quota = next(n["inputs"]["quota_per_class"] for n in api.values() if n["class_type"] == "DTGenPromptSampler")
        run = HYBRID_NOTE.format(dataset=cp["dataset_name"], sd_quota=sd_quota, cp_quota=cp["quota_per_class"])
    else:
        run = COPY_PASTE_NOTE.format(objects=objects, dataset=cp["dataset_name"], quota=cp["quota_per_class"])
    return [{"title": "Read me: cutouts, backgrounds, model files", "text": files, "size": [620, 300]},
            {"title": "Read me: how it runs", "text": run, "size": [620, 260]}]


def _train_notes(spec: dict, api: dict) -> list[dict]:
    fewshot = next(n["inputs"] for n in api.values() if n["class_type"] == "DTGenFewShotImages")
    prefix = next(n["inputs"]["prefix"] for n in api.values() if n["class_type"] == "SaveLoRANode")
    generate = spec.get("generate", False)
    photos = PHOTOS_NOTE.format(photo_set=fewshot["folder"], pack=spec["pack"], clip_row=CLIP_ROW if generate else "",
                                clip_target=" and to both CLIPTextEncode nodes" if generate else "")
    notes = [{"title": "Read me: your photos and model files", "text": photos, "size": [620, 300]},
             {"title": "Read me: training settings, where the LoRA lands", "text": TRAIN_NOTE.format(prefix=prefix),
              "size": [620, 300]}]
    if generate:
        dataset = next(n["inputs"]["dataset_name"] for n in api.values() if n["class_type"] == "DTGenDatasetWriter")
        notes.append({"title": "Read me: how it runs", "size": [620, 240],
                      "text": TRAIN_GENERATE_NOTE.format(pack=spec["pack"], dataset=dataset)})
    return notes


def notes_for(name: str, api: dict) -> list[dict]:
    spec = WORKFLOWS[name]
    if spec.get("train"):
        return _train_notes(spec, api)
    if spec.get("copy_paste"):
        return _copy_paste_notes(spec, api)
    if spec.get("defects"):
        return _defect_notes(api)
    dataset = next((n["inputs"]["dataset_name"] for n in api.values()
                    if n["class_type"] == "DTGenDatasetWriter"), spec["pack"])
    files = FILES_NOTE.format(lora_row=LORA_ROW if spec["lora"] else "",
                              clip_target=" (LoraLoader's `clip` input)" if spec["lora"] else
                              " (both CLIPTextEncode nodes)")
    quota = next(n["inputs"].get("quota_per_class", 0) for n in api.values()
                 if n["class_type"] == "DTGenPromptSampler")
    run = RUN_NOTE.format(pack=spec["pack"], dataset=dataset, quota=quota,
                          lora=" + **LoraLoader** (your LoRA)" if spec["lora"] else "")
    return [{"title": "Read me: model files", "text": files, "size": [620, 240]},
            {"title": "Read me: how it runs", "text": run, "size": [620, 240]}]


def build(name: str, object_info: dict) -> dict:
    api = json.loads((EXAMPLES / "api" / f"{name}.json").read_text())
    return api_to_ui(api, object_info, notes_for(name, api), models={"CheckpointLoaderSimple": CKPT,
                                                                         "DTGenTrainCheckpointLoader": CKPT})


def dumps(workflow: dict) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def fetch_object_info(url: str) -> dict:
    with urllib.request.urlopen(url.rstrip("/") + "/object_info", timeout=60) as r:
        return json.loads(r.read())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8188", help="running ComfyUI with DTGen loaded")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is stale")
    args = ap.parse_args(argv)
    object_info = fetch_object_info(args.url)
    stale = []
    for name in WORKFLOWS:
        path, text = EXAMPLES / f"{name}.json", dumps(build(name, object_info))
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        print(f"stale: {path.relative_to(ROOT)} (run tools/make_ui_workflows.py)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
