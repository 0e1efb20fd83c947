"""``python -m runner demo``: one command from a checkout to a small labelled dataset.

Finds ComfyUI, links this pack into a workspace of its own (the ComfyUI tree is not touched),
starts a server unless a ComfyUI already runs on the port, queues the main example workflow for a
small per-class quota, finalizes the dataset and prints where everything is. Without the real SD3.5,
LoRA and CLIP files it builds the embedded default: a tiny random-weight SD3 + LoRA and a random
ViT-B-32 (a pipeline demo: the pictures are noise); then it always runs a server of its own, on a
free port if a ComfyUI already holds the chosen one.

The embedded default (and ``--real-images`` with the real weights) runs the few-shot template
instead: a photo set (the user's ``--real-images``, copied into ``<workspace>/fewshot``, or drawn
placeholders) trains a LoRA, which the generation then loads, and the photos join the dataset as
``source: real``. The set folder reaches only a server the demo starts (``dtgen_fewshot`` model folder).

Then, on the same server, the CPU-only copy-paste template (``dtgen_copy_paste``, no diffusion model)
fills a second dataset, ``dtgen_demo_copy_paste``: cutouts (``--cutouts`` or the placeholder plates and
bowls drawn on transparency) pasted on backgrounds (``--backgrounds`` or drawn table textures), each
image with its exact instance masks, filtered by CLIP and finalized with a COCO and a YOLO export
(``--no-copy-paste`` skips it; a ComfyUI already running on the port cannot see the sets, so it is
skipped there too).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from ..api import ComfyAPI, ComfyError
from ..local_server import (
    ROOT,
    LocalServer,
    LocalServerError,
    comfy_python,
    find_comfyui,
    free_port,
    port_in_use,
)
from ..workflow import Workflow

WORKFLOW = ROOT / "example_workflows" / "api" / "dtgen_sd35_lora.json"
TRAIN_WORKFLOW = ROOT / "example_workflows" / "api" / "dtgen_sd35_train_generate.json"
DEFAULT_WORKSPACE = Path.home() / ".cache" / "dtgen-demo"
DATASET = "dtgen_demo"
# the tiny SD3 in the layout of the file the templates name (sd3.5_large_fp8_scaled)
TINY = {"checkpoints": "tiny_sd3_fp8_scaled.safetensors", "loras": "tiny_sd3_lora.safetensors",
        "open_clip": "ViT-B-32-random.safetensors"}
TINY_CLASSES = "plate_clean,plate_heavily_dirty,bowl_clean,bowl_heavily_dirty"
TINY_SETTINGS = ("EmptySD3LatentImage.width=64", "EmptySD3LatentImage.height=64", "KSampler.steps=3")
FEWSHOT = "DTGenFewShotImages"
# a few fp32 steps: what a CPU trains in seconds
TINY_TRAINING = (f"{FEWSHOT}.size=64", "TrainLoraNode.steps=3", "TrainLoraNode.rank=4",
                 "TrainLoraNode.training_dtype=fp32", "TrainLoraNode.lora_dtype=fp32",
                 "TrainLoraNode.gradient_checkpointing=false", "TrainLoraNode.grad_accumulation_steps=1",
                 "TrainLoraNode.learning_rate=0.01")
PHOTO_SETS = "fewshot"   # <workspace>/fewshot/<set>: the server's dtgen_fewshot folder
REAL_SET, PLACEHOLDER_SET = "real_photos", "placeholder_photos"


def add_demo_args(p) -> None:
    p.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH, then ~/comfy/ComfyUI)")
    p.add_argument("--python", help="Python that runs ComfyUI (default: its venv if found, else this one)")
    p.add_argument("--port", type=int, default=8188,
                   help="use the ComfyUI on this port, or start one there (8188); with the tiny models the demo "
                        "starts its own, on a free port if a ComfyUI already runs on this one")
    p.add_argument("--workspace", type=Path, default=DEFAULT_WORKSPACE,
                   help=f"folder for the server's files, the demo models and the dataset ({DEFAULT_WORKSPACE})")
    p.add_argument("--quota", type=int, default=2, help="accepted images per class (default 2)")
    p.add_argument("--classes", help=f"classes to generate (default: all; with the tiny model {TINY_CLASSES})")
    p.add_argument("--tiny", action="store_true", help="use the tiny random models even if real weights exist")
    p.add_argument("--real-images", type=Path, metavar="DIR",
                   help="your few photos, <DIR>/<label>/*.jpg with labels of the prompt pack: a LoRA is trained "
                        "on them before generating, and they join the dataset as real images (default with the "
                        "tiny models: drawn placeholders)")
    p.add_argument("--cutouts", type=Path, metavar="DIR",
                   help="cutouts for the copy-paste step, <DIR>/<label>/ with RGBA PNGs (alpha = object) or "
                        "<name>.jpg + <name>_mask.png (default: the placeholder plates and bowls, drawn)")
    p.add_argument("--backgrounds", type=Path, metavar="DIR",
                   help="backgrounds for the copy-paste step, a flat folder of photos (default: drawn table "
                        "textures)")
    p.add_argument("--no-copy-paste", action="store_true",
                   help="skip the copy-paste step (cutouts on backgrounds, masks, COCO + YOLO export)")
    p.add_argument("--keep-server", action="store_true", help="leave the started server running")
    p.add_argument("--models-cache", type=Path, default=None,
                   help="where the embedded tiny models are built once (default: <workspace>/models-demo, so "
                        "--workspace keeps everything under it)")


def models_cache(args) -> Path:
    """Where the tiny models are built: ``--models-cache``, else inside the workspace."""
    return Path(args.models_cache or Path(args.workspace) / "models-demo").expanduser()


def real_models(comfyui: Path, wf: Workflow) -> dict[str, Path]:
    """The example's model files as found in the install's models folder (folder -> path)."""
    found = {}
    for node in wf.graph.values():
        for name, folder in (("ckpt_name", "checkpoints"), ("lora_name", "loras"), ("weights", "open_clip")):
            value = node["inputs"].get(name)
            if isinstance(value, str):
                found[folder] = comfyui / "models" / folder / value
    return found


def choose_workflow(tiny: bool, real_images) -> Path:
    """The few-shot template (photos -> LoRA -> generation) with the tiny models or the user's photos,
    else the generation template with its LoRA file."""
    return TRAIN_WORKFLOW if tiny or real_images else WORKFLOW


def prepare_photos(workspace: Path, real_images, labels, say) -> Path:
    """The photo set the few-shot node trains on, in ``<workspace>/fewshot``: a copy of ``real_images``,
    else drawn placeholders for ``labels``."""
    from .photos import PER_CLASS, copy_photo_set, placeholder_set

    if real_images:
        dest = workspace / PHOTO_SETS / REAL_SET
        images = copy_photo_set(real_images, dest, labels)
        say(f"copied {len(images)} photo(s) in {len({im.label for im in images})} class(es) from {real_images} "
            f"to {dest}")
        return dest
    dest = placeholder_set(workspace / PHOTO_SETS / PLACEHOLDER_SET, labels)
    say(f"no --real-images: drew {PER_CLASS} PLACEHOLDER photos per class in {dest} (plates and bowls as flat "
        "discs and rings, not real photos); pass --real-images DIR with <label>/*.jpg photos of your own")
    return dest


def build_tiny_models(comfyui: Path, python: str, cache: Path, say) -> dict[str, list[Path]]:
    """Tiny SD3 + LoRA + random ViT-B-32 in ``cache`` (built once, about 10 s)."""
    script = str(Path(__file__).parents[1] / "demo_models.py")   # runner/demo_models.py: run by path
    dirs = {folder: cache / folder for folder in TINY}
    if not all((dirs[f] / name).is_file() for f, name in TINY.items()):
        say("building the embedded demo models (tiny SD3 + LoRA, random ViT-B-32) in "
            f"{cache} - once, about 10 s ...")
        build = cache / f"build-{os.getpid()}"   # concurrent builds never share a folder
        clip = [python, script, "--clip", "ViT-B-32", str(build / TINY["open_clip"])]
        for cmd in ([python, script, str(build)], clip):
            build.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(cmd, cwd=comfyui, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise LocalServerError(f"building the demo models failed ({last}); check that {python} can "
                                       "import torch, safetensors and open_clip (pip install -r requirements.txt)")
        for folder, name in TINY.items():
            dirs[folder].mkdir(parents=True, exist_ok=True)
            (build / name).replace(dirs[folder] / name)
        shutil.rmtree(build, ignore_errors=True)
    return {folder: [path] for folder, path in dirs.items()}


# How the demo gets its ComfyUI (see choose_server).
START, REUSE, START_ELSEWHERE, REFUSE = "start", "reuse", "start-elsewhere", "refuse"


def choose_server(port_busy: bool, is_comfy: bool, tiny: bool) -> str:
    """START a server on the free port, REUSE the ComfyUI answering there, START_ELSEWHERE (on another
    port) or REFUSE a port held by a program that is not ComfyUI. A running ComfyUI is not reused
    with the tiny models: their folders reach only a server the demo starts (extra_model_paths)."""
    if not port_busy:
        return START
    if not is_comfy:
        return REFUSE
    return START_ELSEWHERE if tiny else REUSE


def pick_port(port: int, tiny: bool, say) -> tuple[int, bool]:
    """(port, reuse): the port the demo's ComfyUI will answer on and whether it already runs there."""
    busy = port_in_use(port)
    is_comfy = False
    if busy:
        try:
            ComfyAPI(f"http://127.0.0.1:{port}", timeout=5).system_stats()
            is_comfy = True
        except ComfyError:
            pass
    choice = choose_server(busy, is_comfy, tiny)
    if choice == REFUSE:
        raise LocalServerError(f"port {port} is used by a program that is not ComfyUI; pass --port with a free port")
    if choice == START_ELSEWHERE:
        own = free_port()
        say(f"port {port} is busy with another ComfyUI; the demo starts its own on port {own}")
        return own, False
    return port, choice == REUSE


def cmd_demo(args) -> int:
    from ..run import RunSettings, max_items_budget
    from ..scheduler import QueueRun

    t0 = time.monotonic()

    def say(text: str) -> None:
        print(f"[demo {time.monotonic() - t0:5.1f}s] {text}", flush=True)

    comfyui = find_comfyui(args.comfyui)
    python = comfy_python(comfyui, args.python)
    workspace = Path(args.workspace).expanduser().resolve()
    files = real_models(comfyui, Workflow.load(choose_workflow(False, args.real_images)))
    tiny = args.tiny or not all(p.is_file() for p in files.values())
    template = choose_workflow(tiny, args.real_images)
    wf, fewshot = Workflow.load(template), template == TRAIN_WORKFLOW
    say(f"ComfyUI: {comfyui}; workspace: {workspace}")
    port, running = pick_port(args.port, tiny, say)
    if running and fewshot:
        raise LocalServerError(f"--real-images needs a ComfyUI the demo starts (the photo set folder reaches only "
                               f"its own server), but one already runs on port {port}: stop it or pass --port "
                               "with a free port")
    copy_paste = not args.no_copy_paste
    if running and copy_paste:
        if args.cutouts or args.backgrounds:
            raise LocalServerError(f"--cutouts and --backgrounds need a ComfyUI the demo starts (their folders reach "
                                   f"only its own server), but one already runs on port {port}: stop it or pass "
                                   "--port with a free port")
        say(f"no copy-paste step: its cutout and background folders reach only a ComfyUI the demo starts, and one "
            f"already runs on port {port} (pass --port with a free port to include it)")
        copy_paste = False
    url = f"http://127.0.0.1:{port}"
    model_dirs = {}
    if tiny:
        missing = [str(p) for p in files.values() if not p.is_file()]
        say("the real weights are absent (" + (", ".join(missing) or "--tiny") + "): using the embedded default, "
            "a tiny random-weight SD3, a LoRA trained on a few photos for 3 steps and a random ViT-B-32. "
            "THIS IS A PIPELINE DEMO: THE PICTURES ARE NOISE.")
        model_dirs = build_tiny_models(comfyui, python, models_cache(args), say)
        wf.set_models(ckpt=TINY["checkpoints"], clip_weights=TINY["open_clip"])   # the LoRA is trained
        for assignment in (*TINY_SETTINGS, *TINY_TRAINING):
            wf.apply_set(assignment)
    classes = args.classes if args.classes is not None else (TINY_CLASSES if tiny else "")
    wf.set_input(wf.sampler_id, "classes", classes)
    wf.set_dataset(DATASET)
    from ..packs import local_sampler

    sampler = local_sampler(wf.sampler_inputs())
    photos = None
    if fewshot:
        labels = sampler.pack.labels if args.real_images else sampler.labels   # photos: any class of the pack
        photos = prepare_photos(workspace, args.real_images, labels, say)
        model_dirs["dtgen_fewshot"] = [photos.parent]
        wf.apply_set(f"{FEWSHOT}.folder={photos.name}")
    sets = None
    if copy_paste:
        from .cutouts import BACKGROUND_FOLDER, CUTOUT_FOLDER, prepare_sets

        photo_labels = sorted(p.name for p in photos.iterdir() if p.is_dir()) if photos else sampler.labels
        sets = prepare_sets(workspace, args.cutouts, args.backgrounds, photo_labels, say)
        model_dirs[CUTOUT_FOLDER], model_dirs[BACKGROUND_FOLDER] = [sets[0].parent], [sets[1].parent]

    server, output_dir = None, None
    if running:
        say(f"using the ComfyUI already running at {url}")
    else:
        say(f"starting ComfyUI on {url} (log: {workspace / f'server-{port}.log'}) ...")
        server = LocalServer(comfyui, workspace, port, python=python, model_dirs=model_dirs, cpu=tiny).start()
        output_dir = server.output_dir
        say("ComfyUI is ready")
    try:
        from ..progress import Progress

        targets = {label: args.quota for label in sampler.labels}
        wf.set_writer_quota(args.quota)
        say(f"queueing {args.quota} accepted image(s) for each of {len(targets)} classes ...")
        settings = RunSettings(server=url, targets=targets, output_dir=output_dir,
                               max_items=max_items_budget(targets.values()))
        result = QueueRun(wf, sampler, settings, Progress(every=2.0)).run()
        cp_dataset = run_copy_paste_step(url, wf, sets, args.quota, tiny, output_dir, say) if sets else None
    finally:
        if server is not None and not args.keep_server:
            server.stop()
    report = finalize_demo(result.dataset_dir)
    cp_report = finalize_demo(cp_dataset) if cp_dataset else None
    say("done")
    if photos is not None:
        print(f"photo set: {photos}" + ("" if args.real_images else " (drawn placeholders, not real photos)"))
        loras = Path(output_dir) / "loras"
        for lora in sorted(loras.glob("*.safetensors")) or [f"none in {loras}"]:
            print(f"trained LoRA: {lora}")
    print(f"dataset: {result.dataset_dir}")
    for label, c in sorted(result.counts.items()):
        real = f" {c.get('real', 0):>4} real" if fewshot else ""
        print(f"  {label:<28} {c['accepted']:>4} accepted {c['rejected']:>4} rejected{real}")
    print(f"report: {report.report_json}")
    for path in [*report.contact_sheets.values(), *([report.plot] if report.plot else [])]:
        print(f"  {path}")
    if cp_report is not None:
        print_copy_paste(cp_dataset, sets, cp_report, args)
    if tiny:
        print("(pipeline demo with random weights: the pictures are noise; put the real SD3.5, LoRA and "
              "ViT-B-32 files in ComfyUI's models folders for real images)")
        if cp_report is not None:
            print("(copy-paste: real pixels and exact masks with no diffusion model, but the random ViT-B-32 makes "
                  "the filter's accept/reject decisions arbitrary)")
    print(f"demo finished in {time.monotonic() - t0:.1f} s")
    return 0


def finalize_demo(dataset_dir: Path):
    """Report images (contact sheets, score histograms) and report.json; decisions are kept."""
    from ...nodes.curation.finalize import finalize
    from ...nodes.curation.redecide import histogram_image

    return finalize(dataset_dir, plot_fn=histogram_image, echo=False)


def run_copy_paste_step(url: str, wf: Workflow, sets, quota: int, tiny: bool, output_dir, say) -> Path:
    """The copy-paste template on the demo's server into its own dataset, ``quota`` accepted images per
    class of the cutout set, with the main workflow's CLIP model, through the queue client's run loop;
    returns the dataset folder. A quota the filter keeps short is said; the dataset keeps what was made."""
    from ..progress import Progress
    from ..run import QuotaNotReached, RunSettings
    from ..scheduler import QueueRun
    from .cutouts import DATASET, TEMPLATE, TINY_SIZE, clip_inputs, copy_paste_graph

    cut, bg = sets
    labels = sorted(p.name for p in cut.iterdir() if p.is_dir())
    graph = copy_paste_graph(cut.name, bg.name, quota, clip=clip_inputs(wf.graph), size=TINY_SIZE if tiny else None)
    size = next(n["inputs"]["size"] for n in graph.values() if n["class_type"] == "DTGenCopyPaste")
    say(f"copy-paste: {quota} accepted image(s) of {size}x{size} for each of {len(labels)} classes "
        f"({', '.join(labels)}) into {DATASET} ...")
    settings = RunSettings(server=url, output_dir=output_dir, copy_paste_quota=quota)
    try:
        QueueRun(Workflow(graph, source=f"{TEMPLATE.name} (demo)"), None, settings, Progress(every=2.0)).run()
    except QuotaNotReached as short:
        say(f"{short}: the dataset keeps what was made")
    return Path(output_dir) / DATASET


def print_copy_paste(dataset_dir: Path, sets, report, args) -> None:
    """Where the copy-paste dataset's images, masks and exports are, and its per-class decisions."""
    cut, bg = sets
    print(f"copy-paste dataset: {dataset_dir}")
    print(f"  cutouts: {cut}" + ("" if args.cutouts else " (drawn placeholders, not real photos)"))
    print(f"  backgrounds: {bg}" + ("" if args.backgrounds else " (drawn placeholder table textures)"))
    print(f"  images: {dataset_dir / 'images'} (rejected: {dataset_dir / 'rejected'})")
    print(f"  masks: {dataset_dir / 'masks'} (instance ids, 0 = background)")
    coco, yolo = report.exports.get("coco"), report.exports.get("yolo")
    if coco:
        for name in coco["files"].values():
            print(f"  COCO: {dataset_dir / name} ({coco['annotations']} annotations on {coco['images']} images)")
    if yolo:
        print(f"  YOLO: {dataset_dir / 'labels'} ({yolo['labels']} label files), {dataset_dir / yolo['data']}")
    for label, c in sorted(report.per_class.items()):
        print(f"  {label:<28} {c['accepted']:>4} accepted {c['rejected']:>4} rejected")
    print(f"  report: {report.report_json}")
