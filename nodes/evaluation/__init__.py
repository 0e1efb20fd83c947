"""Evaluation: does a generated dataset train a better classifier than the few real images alone?

``evaluate(dataset_dir, test_set, encode, fewshot=None, sweep=False, seed=0, ...)`` is the one
entry point (the node and ``python -m runner evaluate``); it returns an ``EvaluationReport``.
Stages: ``testset`` (test images and classes), ``features`` (CLIP features, stored or encoded),
``arms`` (training sets), ``probe`` (linear probe), ``metrics`` (numbers and table), ``sweep``
(threshold settings), ``plots`` (confusion matrices), ``finetune`` (optional ResNet18 fine-tune).
"""
from .errors import EvaluationError
from .features import clip_encoder
from .finetune import FinetuneOptions
from .report import ArmResult, EvaluationReport, evaluate

__all__ = ["ArmResult", "EvaluationError", "EvaluationReport", "FinetuneOptions", "clip_encoder", "evaluate"]
