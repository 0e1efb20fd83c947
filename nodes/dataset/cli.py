"""Command line for a dataset folder (run from the DTGen checkout, e.g. custom_nodes/ComfyUI-DTGen):

    python -m nodes.dataset.cli status    <dataset_dir> [--target label=N ...]
    python -m nodes.dataset.cli reconcile <dataset_dir>
    python -m nodes.dataset.cli finalize  <dataset_dir> [--split 0.8,0.1,0.1] [--decide module:function]

``--decide`` names a callable ``f(records) -> [(accepted, threshold, reason, provisional), ...]``
(for example the filter's ``refilter``), imported with ``importlib``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from .finalize import finalize
from .layout import DatasetError, open_dataset
from .lock import DatasetLock
from .quotas import counts, missing
from .reconcile import reconcile


def _load_callable(spec: str):
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--decide {spec!r}: expected 'module:function'")
    if module.startswith("."):
        module = __package__.rsplit(".", 2)[0] + module  # relative to the pack, e.g. .nodes.filtering.decide
    return getattr(importlib.import_module(module), name)


def _targets(pairs) -> dict[str, int]:
    out = {}
    for pair in pairs or []:
        label, sep, n = pair.rpartition("=")
        if not sep or not n.isdigit():
            raise ValueError(f"--target {pair!r}: expected label=N")
        out[label] = int(n)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodes.dataset.cli", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("status", help="per-class counts (and what is missing for --target label=N)")
    p.add_argument("dataset_dir")
    p.add_argument("--target", action="append", metavar="LABEL=N")
    p = sub.add_parser("reconcile", help="repair after a crash (orphans, truncated manifest, temp files)")
    p.add_argument("dataset_dir")
    p = sub.add_parser("finalize", help="re-decide, split and write report/ (report.json, contact sheets)")
    p.add_argument("dataset_dir")
    p.add_argument("--split", help="train,val,test fractions, e.g. 0.8,0.1,0.1")
    p.add_argument("--decide", metavar="MODULE:FUNCTION", help="decision callable over all records")
    p.add_argument("--contact-sheet-max", type=int, default=24, help="thumbnails per side per class")
    args = parser.parse_args(argv)
    try:
        if args.command == "status":
            open_dataset(args.dataset_dir, create=False)
            out = {"counts": counts(args.dataset_dir)}
            if args.target:
                out["missing"] = missing(args.dataset_dir, _targets(args.target))
            print(json.dumps(out, indent=2))
        elif args.command == "reconcile":
            open_dataset(args.dataset_dir, create=False)
            with DatasetLock(args.dataset_dir):
                rep = reconcile(args.dataset_dir)
            print(json.dumps(rep.__dict__, indent=2))
        else:
            split = args.split or None
            decide = _load_callable(args.decide) if args.decide else None
            rep = finalize(args.dataset_dir, decide_fn=decide, split=split, contact_sheet_max=args.contact_sheet_max)
            print(f"report: {rep.report_json}")
    except (DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
