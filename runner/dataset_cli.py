"""Dataset subcommands of ``python -m runner``: status, reconcile, redecide, finalize (the last two
with ``--split-folders``: one ImageFolder tree per split under ``<dataset>/splits/``; finalize with
``--export coco,yolo``: COCO ``annotations/`` and YOLO ``labels/`` + ``data.yaml`` of the instances).

They work on a dataset folder directly (no server). Bad input (no such folder, not a dataset, a
bad split or threshold setting) prints one ``error: ...`` line and exits with status 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..nodes.curation.finalize import finalize
from ..nodes.curation.quotas import counts, missing
from ..nodes.curation.real_anchor import BASES, DEFAULT_TOP_K
from ..nodes.curation.redecide import decide_fn_for, histogram_image
from ..nodes.curation.thresholds import method_from
from ..nodes.store.clean_marker import is_clean, mark_clean
from ..nodes.store.layout import DatasetError, check_tree, open_dataset
from ..nodes.store.lock import DatasetLock
from ..nodes.store.reconcile import reconcile

COMMANDS = ("status", "reconcile", "redecide", "finalize")
SPLIT_FOLDERS_HELP = ("also (re)build <dataset>/splits/<split>/<label>/ (hard links, else copies, of the accepted "
                      "images; metadata.jsonl per split) for ImageFolder / load_dataset per split; uses --split or "
                      "the split recorded by an earlier finalize")


def add_dataset_commands(sub) -> None:
    p = sub.add_parser("status", help="per-class counts of a dataset (and what is missing for --target label=N)")
    p.add_argument("dataset_dir")
    p.add_argument("--target", action="append", metavar="LABEL=N")
    p = sub.add_parser("reconcile", help="repair a dataset after a crash (orphans, truncated manifest, temp "
                                         "files, images whose size differs from the recorded one)")
    p.add_argument("dataset_dir")
    p.add_argument("--verify", action="store_true", help="also decode every image; broken ones move to "
                                                         "orphans/damaged/ and their items are made again")
    p = sub.add_parser("redecide", help="re-decide every stored image with another threshold method or k "
                                        "(stored scores: nothing is re-encoded), then split and report")
    p.add_argument("dataset_dir")
    p.add_argument("--method", default="mean_std", help="mean_std | median_mad | percentile | fixed | gmm")
    p.add_argument("--k", type=float, default=1.5)
    p.add_argument("--keep-percent", type=float, default=90.0)
    p.add_argument("--fixed-threshold", type=float, default=0.25)
    p.add_argument("--min-count", type=int, default=8)
    p.add_argument("--class-margin", type=float, default=None,
                   help="re-run the class-margin check with this margin (default: keep the filter's verdicts)")
    p.add_argument("--near-duplicate", type=float, default=None,
                   help="re-run the near-duplicate check at this cosine (default: keep the filter's verdicts)")
    p.add_argument("--decide-on", default="text", choices=BASES,
                   help="threshold the text score (default, as before), the real-anchored score (recomputed from the "
                        "stored embeddings against the dataset's real photos) or both; *_calibrated: the real "
                        "threshold is the photos' own leave-one-out floor; classes without real photos: text")
    p.add_argument("--real-top-k", type=int, default=DEFAULT_TOP_K,
                   help=f"k of the real-anchored score (mean of the top-k cosines, at most one less than the class's "
                        f"photos; default {DEFAULT_TOP_K})")
    p.add_argument("--split", help="train,val,test fractions, e.g. 0.8,0.1,0.1")
    p.add_argument("--split-folders", action="store_true", help=SPLIT_FOLDERS_HELP)
    p = sub.add_parser("finalize", help="split and write report/ (report.json, histograms, contact sheets), "
                                        "keeping every decision")
    p.add_argument("dataset_dir")
    p.add_argument("--split", help="train,val,test fractions, e.g. 0.8,0.1,0.1")
    p.add_argument("--split-folders", action="store_true", help=SPLIT_FOLDERS_HELP)
    p.add_argument("--contact-sheet-max", type=int, default=24, help="thumbnails per side per class")
    p.add_argument("--export", default=None, metavar="coco,yolo",
                   help="write COCO annotations/instances[_<split>].json and/or YOLO labels/ + data.yaml for the "
                        "instance masks ('none' for neither); default: both when any image has instances")


def _targets(pairs) -> dict[str, int]:
    out = {}
    for pair in pairs or []:
        label, sep, n = pair.rpartition("=")
        if not sep or not n.isdigit():
            raise ValueError(f"--target {pair!r}: expected label=N")
        out[label] = int(n)
    return out


def _existing_dataset(path: str) -> str:
    if not Path(path).is_dir():
        problem = "is not a folder" if Path(path).exists() else "no such folder"
        raise ValueError(f"{path}: {problem} (give the dataset folder, e.g. ComfyUI/output/tableware)")
    open_dataset(path, create=False)  # refuses a folder without dataset.json
    return path


def run_dataset_command(args) -> int:
    try:
        dataset_dir = _existing_dataset(args.dataset_dir)
        if args.command == "status":   # read-only: never repairs (a torn tail stays for reconcile)
            check_tree(dataset_dir)
            if not is_clean(dataset_dir):
                print(f"note: {dataset_dir} was not closed cleanly (a crash, or a writer still running): the counts "
                      f"are of its complete records; `python -m runner reconcile {dataset_dir}` repairs it",
                      file=sys.stderr)
            out = {"counts": counts(dataset_dir)}
            if args.target:
                out["missing"] = missing(dataset_dir, _targets(args.target))
            print(json.dumps(out, indent=2))
        elif args.command == "reconcile":
            with DatasetLock(dataset_dir):
                rep = reconcile(dataset_dir, verify=args.verify)
                mark_clean(dataset_dir)
            print(json.dumps(rep.__dict__, indent=2))
        else:
            decide_fn = None
            if args.command == "redecide":
                method = method_from(args.method, args.k, args.keep_percent, args.fixed_threshold)
                decide_fn = decide_fn_for(method, args.min_count, args.class_margin, args.near_duplicate,
                                          basis=args.decide_on, real_top_k=args.real_top_k)
            rep = finalize(dataset_dir, decide_fn=decide_fn, split=args.split or None, plot_fn=histogram_image,
                           contact_sheet_max=getattr(args, "contact_sheet_max", 24), split_folders=args.split_folders,
                           export=getattr(args, "export", None))
            print(f"report: {rep.report_json}")
            if rep.split_folders:
                print(f"split folders: {rep.split_folders.path}")
    except (DatasetError, ValueError, OSError) as e:  # DatasetPathError, ClipFilterError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
