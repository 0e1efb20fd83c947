"""The optional ResNet18 fine-tune, tiny (1 epoch, 32 px, random init): runs, reports its runs
and init, loads a local torchvision state dict, refuses a bad one; through ``evaluate`` too."""
from __future__ import annotations

import pytest
from dtgen.nodes.evaluation import EvaluationError, evaluate
from dtgen.nodes.evaluation.finetune import FinetuneOptions, finetune
from dtgen.nodes.fewshot.imageset import scan
from evalkit import CLASSES, SIZE, image_folder, synthetic_item, write_dataset

TINY = {"epochs": (1,), "image_size": 32, "batch_size": 8, "device": "cpu"}


@pytest.fixture
def images(tmp_path):
    train = scan(image_folder(tmp_path / "train", {c: 4 for c in CLASSES}, seed=1))
    test = scan(image_folder(tmp_path / "test", {c: 2 for c in CLASSES}, seed=2))
    label = {c: i for i, c in enumerate(CLASSES)}
    return ([im.path for im in train], [label[im.label] for im in train],
            [im.path for im in test], [label[im.label] for im in test])


@pytest.mark.slow
def test_a_tiny_finetune_runs_and_reports(images):
    res = finetune(*images, CLASSES, FinetuneOptions(**{**TINY, "epochs": (1, 2)}))
    assert res.init == "random init" and res.device == "cpu" and res.epochs in (1, 2)
    assert set(res.runs) == {1, 2} and all(0 <= r["accuracy"] <= 1 for r in res.runs.values())
    assert res.metrics.n == 6 and res.metrics.classes == CLASSES
    assert res.runs[res.epochs]["macro_f1"] == max(r["macro_f1"] for r in res.runs.values())
    again = finetune(*images, CLASSES, FinetuneOptions(**TINY))          # seeded: the same 1-epoch run
    assert {k: v for k, v in again.runs[1].items() if k != "seconds"} == \
        {k: v for k, v in res.runs[1].items() if k != "seconds"}


def test_local_weights_are_loaded_and_bad_ones_refused(images, tmp_path):
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(0)
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    res = finetune(*images, CLASSES, FinetuneOptions(**TINY, weights=str(path)))
    assert res.init == "weights resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(EvaluationError, match="not a torchvision ResNet18 state dict"):
        finetune(*images, CLASSES, FinetuneOptions(**TINY, weights=str(tmp_path / "other.pth")))
    with pytest.raises(EvaluationError, match="does not exist"):
        finetune(*images, CLASSES, FinetuneOptions(**TINY, weights=str(tmp_path / "missing.pth")))
    with pytest.raises(EvaluationError, match="must be positive"):
        finetune(*images, CLASSES, FinetuneOptions(**{**TINY, "epochs": ()}))


def test_evaluate_with_a_finetune(tmp_path, encoder):
    ds = write_dataset(tmp_path / "ds", [synthetic_item(i, CLASSES[i % 3]) for i in range(9)])
    test = image_folder(tmp_path / "test", {c: 2 for c in CLASSES}, seed=2)
    rep = evaluate(ds, test, encoder, image_size=SIZE, finetune=FinetuneOptions(**TINY))
    arm = rep.arms[0]
    assert arm.finetune is not None and arm.finetune.runs.keys() == {1}
    assert "fine-tuned ResNet18 (random init, best of 1 epochs on cpu):" in rep.text()
    assert rep.finetune_table().splitlines()[2].startswith("| synthetic ")
    assert any("random init" in n for n in rep.notes)
    with pytest.raises(EvaluationError, match="ResNet18 weights file does not exist"):
        evaluate(ds, test, encoder, image_size=SIZE, finetune=FinetuneOptions(**TINY, weights="/nope.pth"))
