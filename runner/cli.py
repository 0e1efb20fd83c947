"""The one command line: ``python -m runner queue|demo|status|reconcile|redecide|finalize ...`` from
the DTGen checkout (or ``python <checkout>/runner ...``)."""
from __future__ import annotations

import argparse
import math
import os
import sys
from fractions import Fraction
from pathlib import Path

from ..nodes.prompting.pack import PromptPackError
from ..nodes.prompting.sampler import MAX_COUNT
from ..nodes.store.layout import DatasetError
from .api import ComfyError
from .local_server import LocalServerError
from .run import FLAG_NAME, GENERATED, MIX_SOURCES, RunError, max_items_budget
from .workflow import Workflow, WorkflowError

DEFAULT_SERVER = "http://127.0.0.1:8188"


# -- argument types: a bad value stops argparse with "error: argument --flag: why, got VALUE" (exit 2)
def whole(low: int, high: int | None = None):
    """An integer in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value
    return parse


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return value


def folder(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not an existing folder")
    return path


def split_quota(value: str) -> tuple[str | None, int]:
    """``N`` -> (None, N); ``label=N`` -> (label, N); a ValueError says what is wrong with it."""
    label, sep, n = value.rpartition("=")
    try:
        count = int(n)
    except ValueError:
        count = None
    if count is None or (sep and not label.strip()):
        raise ValueError("expected N or label=N")
    if count < 1:
        raise ValueError("a quota must be >= 1")
    return (label.strip() if sep else None), count


def quota_arg(value: str) -> str:
    try:
        split_quota(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}, got {value!r}") from None
    return value


def mix_arg(text: str) -> dict[str, Fraction]:
    """``sd:A,copy_paste:B`` -> {"sd": A, "copy_paste": B} (a source not named gets 0)."""
    out: dict[str, Fraction] = {}
    for part in text.split(","):
        name, sep, weight = part.strip().partition(":")
        name = name.strip()
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"expected SOURCE:WEIGHT[,SOURCE:WEIGHT], e.g. sd:1,copy_paste:1, "
                                             f"got {text!r}")
        if name not in MIX_SOURCES:
            raise argparse.ArgumentTypeError(f"unknown source {name!r} (sources: {', '.join(MIX_SOURCES)}), "
                                             f"got {text!r}")
        if name in out:
            raise argparse.ArgumentTypeError(f"source {name!r} given twice, got {text!r}")
        try:
            value = Fraction(weight.strip())
        except (ValueError, ZeroDivisionError):
            value = None
        if value is None or value < 0:
            raise argparse.ArgumentTypeError(f"the weight of {name!r} must be a number >= 0, got {text!r}")
        out[name] = value
    if not any(out.values()):
        raise argparse.ArgumentTypeError(f"at least one weight must be > 0, got {text!r}")
    return {name: out.get(name, Fraction(0)) for name in MIX_SOURCES}


def split_mix(n: int, mix: dict[str, Fraction]) -> tuple[int, int]:
    """``n`` images per class as (sd, copy_paste) in the ratio of ``mix``; the rounding goes to sd
    on a tie (--quota 5 --mix sd:1,copy_paste:1: 3 + 2)."""
    total = mix["sd"] + mix["copy_paste"]
    generated = math.floor(n * mix["sd"] / total + Fraction(1, 2))
    return generated, n - generated


def parse_quotas(values, labels) -> dict[str, int] | None:
    """``--quota N`` (every sampled class) and/or ``--quota label=N``; labels are checked."""
    if not values:
        return None
    out: dict[str, int] = {}
    for value in values:
        try:
            label, n = split_quota(value)
        except ValueError as e:
            raise ValueError(f"--quota {value!r}: {e}") from None
        if label is None:
            out.update({lab: n for lab in labels if lab not in out})
        elif label not in labels:
            raise ValueError(f"--quota {value!r}: class {label!r} is not sampled; sampled classes: {', '.join(labels)}")
        else:
            out[label] = n
    return out


def add_queue_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("workflow", help="API-format workflow JSON: a DTGenPromptSampler and/or a DTGenCopyPaste, "
                   "each feeding a DTGenDatasetWriter")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--quota", action="append", type=quota_arg, metavar="N|LABEL=N",
                      help="accepted images per class (repeat LABEL=N for per-class targets). In a hybrid graph "
                           "(prompt sampler + copy-paste branch) it is the SD quota, and the copy-paste node keeps "
                           "its own quota_per_class (change it with --set ID.quota_per_class=M), unless --mix "
                           "splits N between them; in a copy-paste-only graph, the copy-paste quota")
    goal.add_argument("--items", type=whole(1), metavar="N", help="queue the prompt sampler's items start..start+N-1 "
                      "(accepted or not; a copy-paste branch is left out)")
    p.add_argument("--mix", type=mix_arg, metavar="sd:A,copy_paste:B",
                   help="hybrid graph: split --quota N per class between the SD images and the copy-paste images "
                        "in the ratio A:B (--quota 200 --mix sd:1,copy_paste:1 = 100 + 100; a weight of 0 leaves "
                        "that source out)")
    p.add_argument("--server", action="append", metavar="URL",
                   help=f"the ComfyUI server (default {DEFAULT_SERVER}); with --ray, existing servers to use as the "
                        "workers, one Ray worker each (repeatable)")
    p.add_argument("--dataset", help="dataset name (sets the dataset_name of the writers, the filters, the sampler "
                   "and the copy-paste node)")
    p.add_argument("--output-dir", type=Path, help="the server's ComfyUI output folder as seen from here "
                   "(default: learnt from the first finished item); with --ray, the folder of the central dataset "
                   "(default ./output)")
    p.add_argument("--pending", type=whole(1), default=2, help="prompts kept queued on the server, with --ray per "
                   "worker (default 2)")
    p.add_argument("--per-prompt", type=whole(1, MAX_COUNT), metavar="K",
                   help=f"items per queued prompt (the sampler's count, at most {MAX_COUNT}; default 1; in a "
                        "copy-paste-only graph the copy-paste node's count, default its own)")
    p.add_argument("--start", type=whole(0), help="first item index (default: the sampler's start_index; in a "
                   "copy-paste-only graph the copy-paste node's)")
    p.add_argument("--retries", type=whole(0), default=2,
                   help="tries again a failed prompt this many times (default 2)")
    p.add_argument("--max-items", type=whole(1), help="stop after queueing this many items (default 20 x the quota; "
                   "each source on its own)")
    p.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="override an input, e.g. 7.steps=20 or KSampler.steps=20 (value parsed as JSON if it can be)")
    p.add_argument("--ckpt", help="checkpoint file name for every CheckpointLoaderSimple")
    p.add_argument("--lora", help="LoRA file name for every LoraLoader")
    p.add_argument("--clip-weights", help="open_clip weights file name for DTGenClipLoader")
    p.add_argument("--pack-dir", action="append", default=[], type=folder, metavar="DIR",
                   help="extra prompt-pack folder (the server's models/dtgen_prompts), searched after prompts/")
    p.add_argument("--give-up-after", type=seconds, default=120.0,
                   help="seconds the server may not answer before the run stops (default 120)")
    ray = p.add_argument_group("several GPUs or machines (Ray; see docs/scale-out.md)")
    ray.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                     help="run the sampler's items on Ray workers, one per GPU, each with its own ComfyUI; no ADDRESS: "
                          "start a local Ray; ADDRESS: join that cluster (auto, ray://host:10001, host:6379). Needs "
                          "pip install 'ray==2.60.0'")
    ray.add_argument("--ray-workers", type=whole(1), metavar="N",
                     help="Ray workers (default: one per GPU in the cluster; 1 on a CPU-only cluster)")
    ray.add_argument("--comfyui", metavar="PATH", help="ComfyUI folder on the Ray nodes (default: $COMFYUI_PATH, "
                     "then ~/comfy/ComfyUI)")
    ray.add_argument("--python", metavar="PATH", help="Python that runs ComfyUI on the Ray nodes (default: its venv "
                     "if found, else the worker's)")
    ray.add_argument("--model-dir", action="append", default=[], type=model_dir_arg, metavar="FOLDER=PATH",
                     help="an extra models folder on the Ray nodes, e.g. checkpoints=/data/ckpt (repeatable)")
    ray.add_argument("--ray-scratch", metavar="DIR", help="where each Ray worker keeps its ComfyUI workspace and "
                     "scratch dataset (default: the node's temp folder)")
    ray.add_argument("--ray-shared-output", action="store_true",
                     help="the workers' ComfyUI write straight into --output-dir, a folder every Ray node sees at the "
                          "same path (nothing is sent back through Ray)")
    ray.add_argument("--ray-max-restarts", type=whole(0), default=4, metavar="N",
                     help="times Ray restarts a worker (its ComfyUI) that died, and runs its blocks again (default 4)")


def model_dir_arg(text: str) -> tuple[str, str]:
    folder, sep, path = text.partition("=")
    if not sep or not folder.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected FOLDER=PATH, e.g. checkpoints=/data/ckpt, got {text!r}")
    return folder.strip(), path.strip()


def prepare(args) -> tuple:
    """Workflow with overrides, the local sampler (None without one), and run settings from parsed
    arguments."""
    from .packs import local_sampler
    from .run import RunSettings

    wf = Workflow.load(args.workflow)
    for assignment in args.set:
        wf.apply_set(assignment)
    wf.set_models(ckpt=args.ckpt, lora=args.lora, clip_weights=args.clip_weights)
    if args.dataset:
        wf.set_dataset(args.dataset)
    elif wf.has_copy_paste:
        wf.set_dataset(wf.dataset_name)   # the copy-paste node's resume mode counts what its writer fills
    mix = getattr(args, "mix", None)
    check_mix(wf, args, mix)
    sampler = local_sampler(wf.sampler_inputs(), args.pack_dir) if wf.has_sampler else None
    targets, cp_quota = None, 0
    if args.quota:
        targets, cp_quota = split_quotas(wf, args.quota, sampler, mix)
    elif not wf.has_sampler:
        raise WorkflowError(f"--items: {wf.source} has no DTGenPromptSampler; a copy-paste-only graph runs to a "
                            "quota (--quota N: its node's resume mode)")
    per_prompt = args.per_prompt or 1
    if sampler is not None:
        start = args.start if args.start is not None else int(wf.graph[wf.sampler_id]["inputs"].get("start_index") or 0)
    else:
        start = 0
        if args.start is not None:
            wf.set_input(wf.copy_paste_id, "start_index", args.start)
        if args.per_prompt is not None:
            wf.set_input(wf.copy_paste_id, "count", args.per_prompt)
    max_items = args.max_items
    if max_items is None and targets:
        max_items = max_items_budget(targets.values())
    ray = getattr(args, "ray", None) is not None
    servers = args.server or []
    if len(servers) > 1 and not ray:
        raise WorkflowError(f"--server given {len(servers)} times: several ComfyUI servers are Ray workers; add --ray "
                            "(a local Ray; see docs/scale-out.md), or queue on one --server")
    output_dir = args.output_dir
    if ray and output_dir is None:
        output_dir = Path("output")
    settings = RunSettings(
        server=servers[0] if servers else os.environ.get("COMFYUI_URL", DEFAULT_SERVER), targets=targets,
        items=args.items, start=start, per_prompt=per_prompt, pending=args.pending, retries=args.retries,
        output_dir=output_dir, give_up_after=args.give_up_after,
        max_items=max_items, copy_paste_quota=cp_quota, copy_paste_max_items=args.max_items)
    return wf, sampler, settings


def ray_settings(args):
    """--ray and its options as ``RaySettings`` (runner/ray/queue.py; imports no Ray)."""
    from .ray.queue import RaySettings

    model_dirs: dict[str, list[str]] = {}
    for folder, path in args.model_dir:
        model_dirs.setdefault(folder, []).append(str(Path(path).expanduser()))
    return RaySettings(address=args.ray or None, workers=args.ray_workers, servers=list(args.server or []),
                       comfyui=args.comfyui, python=args.python, model_dirs=model_dirs, scratch_root=args.ray_scratch,
                       shared_output=args.ray_shared_output, max_restarts=args.ray_max_restarts,
                       max_task_retries=args.ray_max_restarts)


def check_mix(wf: Workflow, args, mix) -> None:
    """--mix needs a graph with both sources (or at least the ones it gives a share) and --quota."""
    if mix is None:
        return
    shown = ",".join(f"{k}:{v}" for k, v in mix.items())
    if not wf.has_copy_paste:
        raise WorkflowError(f"--mix {shown}: {wf.source} has no DTGenCopyPaste node, so there is nothing to mix "
                            "with the prompt sampler; drop --mix or queue a hybrid workflow "
                            "(example_workflows/api/dtgen_hybrid_copy_paste.json)")
    if mix["sd"] and not wf.has_sampler:
        raise WorkflowError(f"--mix {shown}: {wf.source} has no DTGenPromptSampler to make the sd share; give "
                            "sd a weight of 0 or drop --mix")
    if args.items is not None:
        raise WorkflowError(f"--mix {shown}: it splits --quota between the sources; it cannot be used with --items")


def split_quotas(wf: Workflow, values, sampler, mix) -> tuple[dict[str, int] | None, int]:
    """(SD targets per class, copy-paste images per class) from --quota and --mix. Without --mix a
    hybrid graph's --quota is the SD quota and its copy-paste node keeps its own quota_per_class; a
    copy-paste-only graph's --quota is the copy-paste quota."""
    if wf.has_sampler and mix is None:
        cp = wf.copy_paste_inputs()["quota_per_class"] if wf.has_copy_paste else 0
        return parse_quotas(values, sampler.labels), cp
    mix = mix or {"sd": 0, "copy_paste": 1}
    if not mix["copy_paste"]:                          # all to SD: per-class targets as usual
        return parse_quotas(values, sampler.labels), 0
    plain = [n for label, n in map(split_quota, values) if label is None]
    if len(plain) != len(values):
        raise WorkflowError(f"--quota {' '.join(values)}: the copy-paste node has one quota_per_class for all its "
                            "classes; give one --quota N (pick the classes with --set ID.classes=a,b)")
    generated, cp = split_mix(plain[0], mix)
    if sampler is None:
        return None, cp
    return {label: generated for label in sampler.labels} if generated else {}, cp


def print_summary(result, dataset: str, out=None) -> None:
    out = out or sys.stdout
    where = result.dataset_dir or f"{dataset} (under the server's output folder; nothing was generated)"
    print(f"dataset: {where}", file=out)
    by_source = getattr(result, "by_source", None) or {}
    if by_source:
        for source, counts in by_source.items():
            print(f"  {source}" + (f" (source {GENERATED})" if source == FLAG_NAME[GENERATED] else "") + ":", file=out)
            for label, c in sorted(counts.items()):
                print(f"    {label:<26} {c['accepted']:>6} accepted {c['rejected']:>6} rejected", file=out)
    else:
        for label, c in sorted(result.counts.items()):
            print(f"  {label:<28} {c['accepted']:>6} accepted {c['rejected']:>6} rejected", file=out)
    per_server = ", ".join(f"{u}: {n}" for u, n in result.servers.items())
    made = getattr(result, "items_by_source", None) or {}
    split = f" ({', '.join(f'{k} {v}' for k, v in made.items())})" if by_source and made else ""
    print(f"{result.items_done} item(s) generated{split} in {result.elapsed:.1f} s ({per_server})", file=out)
    if result.failed:
        print(f"failed after retries: {result.failed[:20]}", file=out)


def cmd_queue(args) -> int:
    wf, sampler, settings = prepare(args)
    if args.ray is not None:
        from .ray.queue import run_ray

        result = run_ray(wf, sampler, settings, ray_settings(args))
    else:
        from .scheduler import QueueRun

        result = QueueRun(wf, sampler, settings).run()
    print_summary(result, wf.dataset_name)
    return 0


class Parser(argparse.ArgumentParser):
    """Usage mistakes end with one line on stderr (exit 2), like every other error."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def main(argv=None) -> int:
    parser = Parser(prog="python -m runner",
                    description="DTGen from the shell: queue workflows on ComfyUI servers over the HTTP API "
                                "(queue, demo), check, repair, re-decide or finalize a dataset folder "
                                "(status, reconcile, redecide, finalize) and measure it on real images (evaluate).")
    sub = parser.add_subparsers(dest="command", required=True)
    add_queue_args(sub.add_parser("queue", help="queue a workflow until per-class quotas (or N items) are met"))
    from .demo.command import add_demo_args
    add_demo_args(sub.add_parser("demo", help="one command: find ComfyUI, start it, generate a small dataset"))
    from .dataset_cli import COMMANDS, add_dataset_commands, run_dataset_command
    add_dataset_commands(sub)
    from .evaluate_cli import EVALUATE_HELP, add_evaluate_args, cmd_evaluate
    add_evaluate_args(sub.add_parser("evaluate", help=EVALUATE_HELP))
    args = parser.parse_args(argv)
    if args.command in COMMANDS:
        return run_dataset_command(args)
    if args.command == "evaluate":
        return cmd_evaluate(args)
    try:
        if args.command == "queue":
            return cmd_queue(args)
        from .demo.command import cmd_demo
        return cmd_demo(args)
    except KeyboardInterrupt:
        return 130
    except (RunError, ComfyError, LocalServerError, DatasetError, WorkflowError, PromptPackError, ValueError,
            OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
