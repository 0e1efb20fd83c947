"""Check or repair a dataset folder from the shell. Run it from the DTGen checkout
(e.g. ComfyUI/custom_nodes/dtgen) with ComfyUI's Python:

    python -m nodes.dataset.cli status    <dataset_dir> [--target label=N ...]
    python -m nodes.dataset.cli reconcile <dataset_dir> [--verify]
    python -m nodes.dataset.cli finalize  <dataset_dir> [--split 0.8,0.1,0.1]

``finalize`` here keeps every stored decision (split and report/ only). To re-decide with another
threshold method or k, use ``python -m nodes.filtering.offline <dataset_dir> --method ...``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .finalize import finalize
from ..store.layout import DatasetError, open_dataset
from ..store.lock import DatasetLock
from .quotas import counts, missing
from ..store.clean_marker import mark_clean
from ..store.reconcile import ensure_consistent, reconcile


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodes.dataset.cli", description="Check or repair a DTGen "
                                     "dataset folder. Re-deciding: python -m nodes.filtering.offline.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("status", help="per-class counts (and what is missing for --target label=N)")
    p.add_argument("dataset_dir")
    p.add_argument("--target", action="append", metavar="LABEL=N")
    p = sub.add_parser("reconcile", help="repair after a crash (orphans, truncated manifest, temp files, "
                                         "images whose size differs from the recorded one)")
    p.add_argument("dataset_dir")
    p.add_argument("--verify", action="store_true", help="also decode every image; broken ones move to "
                                                         "orphans/damaged/ and their items are made again")
    p = sub.add_parser("finalize", help="split and write report/ (report.json, contact sheets); keeps every "
                                        "decision (to re-decide: python -m nodes.filtering.offline)")
    p.add_argument("dataset_dir")
    p.add_argument("--split", help="train,val,test fractions, e.g. 0.8,0.1,0.1")
    p.add_argument("--contact-sheet-max", type=int, default=24, help="thumbnails per side per class")
    args = parser.parse_args(argv)
    try:
        dataset_dir = _existing_dataset(args.dataset_dir)
        if args.command == "status":
            ensure_consistent(dataset_dir)
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
            rep = finalize(dataset_dir, split=args.split or None, contact_sheet_max=args.contact_sheet_max)
            print(f"report: {rep.report_json}")
    except (DatasetError, ValueError, OSError) as e:  # DatasetPathError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
