"""``python -m runner evaluate <dataset_dir> --test DIR [--fewshot DIR] [--clip-arch ViT-B-32 --clip-weights FILE]
[--sweep [--validation-percent P]] [--leak-cosine C] [--seed N] [--finetune [--finetune-weights FILE]]``:
train a linear probe on the CLIP features of each arm (few-shot real, synthetic, both, per source) and
print the table DTGen Evaluate shows (``nodes.evaluation.evaluate``).

Writes ``<dataset>/report/evaluation.json`` and ``report/confusion_<arm>.png``, nothing else. Bad
input (no such folder, not a dataset, no class in common, a corrupt test image, a missing weights
file) prints one ``error: ...`` line and exits with status 1.
"""
from __future__ import annotations

import argparse
import sys

from ..nodes.evaluation import EvaluationError, FinetuneOptions, clip_encoder, evaluate
from ..nodes.scoring.clip_model import load_clip
from ..nodes.store.layout import DatasetError

EVALUATE_HELP = ("measure a dataset: a linear probe on CLIP features per arm (few-shot real, synthetic, both) "
                 "on a labelled test folder; --sweep also tries threshold settings")


def add_evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset_dir", help="the DTGen dataset folder")
    p.add_argument("--test", required=True, metavar="DIR",
                   help="labelled test images <DIR>/<label>/*: the classes evaluated (held out from training)")
    p.add_argument("--fewshot", metavar="DIR", help="the real training images <DIR>/<label>/* "
                   "(default: the dataset's real images, source: real)")
    p.add_argument("--clip-arch", default="ViT-B-32", help="open_clip architecture (default ViT-B-32)")
    p.add_argument("--clip-weights", metavar="FILE", help="local open_clip weights file (.safetensors, .pt, .bin); "
                   "use the CLIP the dataset was filtered with, so its stored embeddings are reused")
    p.add_argument("--device", default="cpu", help="torch device for CLIP (default cpu)")
    p.add_argument("--batch-size", type=int, default=32, help="images per CLIP forward pass (default 32)")
    p.add_argument("--sweep", action="store_true", help="also re-decide the stored scores under a grid of threshold "
                   "settings (in memory): the best for the classifier is chosen on a validation part of the test "
                   "photos and reported on the held-out rest, with a bootstrap interval of its gain over as stored")
    p.add_argument("--validation-percent", type=float, default=50.0, metavar="P",
                   help="with --sweep: the share of each class's test photos the setting is chosen on (default 50)")
    p.add_argument("--leak-cosine", type=float, default=0.99, metavar="C",
                   help="refuse a test photo whose embedding has this cosine or more with a few-shot image's, "
                   "both centred on their common mean "
                   "(default 0.99; above 1: that rule off; same decoded pixels are always refused)")
    p.add_argument("--sweep-with-fewshot", action="store_true", help="train the sweep's probes on synthetic + few-shot")
    p.add_argument("--finetune", action="store_true", help="also fine-tune a ResNet18 per arm (lr 1e-4, one-cycle, "
                   "rotation/blur/flip, best of 5 and 10 epochs; slow without a GPU)")
    p.add_argument("--finetune-weights", metavar="FILE", help="local torchvision ResNet18 weights for --finetune "
                   "(default: random init, said in the report)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sweep's split and bootstrap and the fine-tune; "
                   "recorded (the probe is deterministic)")


def cmd_evaluate(args, out=None) -> int:
    out = out or sys.stdout
    try:
        if not args.clip_weights:
            raise EvaluationError(None, "--clip-weights FILE is required (a local open_clip weights file; nothing is "
                                  "downloaded)")
        if args.batch_size < 1:
            raise EvaluationError(None, f"--batch-size must be >= 1, got {args.batch_size}")
        tune = None
        if args.finetune or args.finetune_weights:
            tune = FinetuneOptions(weights=args.finetune_weights, device=None if args.device == "cpu" else args.device)
        bundle = load_clip(args.clip_arch, args.clip_weights, device=args.device)
        report = evaluate(args.dataset_dir, args.test, clip_encoder(bundle, args.batch_size),
                          fewshot=args.fewshot, sweep=args.sweep, seed=args.seed, batch_size=args.batch_size,
                          sweep_with_fewshot=args.sweep_with_fewshot, finetune=tune,
                          validation_fraction=args.validation_percent / 100.0, leak_cosine=args.leak_cosine)
    except KeyboardInterrupt:
        return 130
    except (EvaluationError, DatasetError, ValueError, OSError) as e:  # ClipFilterError, FewShotError: ValueErrors
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(report.text(), file=out)
    return 0
