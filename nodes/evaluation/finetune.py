"""Optional: fine-tune a torchvision ResNet18 per arm with the study's protocol (GPU advised).

Protocol: images ``image_size`` square (centre crop), augmented by a random rotation (±15°), a
Gaussian blur (p = 0.5) and a horizontal flip; Adam, one-cycle schedule peaking at ``lr`` = 1e-4,
cross-entropy, batch 32; one run per entry of ``epochs`` (5 and 10), each from the same start, and
the best of them reported (chosen on the test set, as the study did: an optimistic number; every
run's numbers are kept). Weights come from a LOCAL file (a torchvision ResNet18 state dict,
.safetensors or .pth/.pt); without one the network starts from a random init and the result says so.
Seeded (``torch.manual_seed``, a seeded shuffle); on a GPU, cuDNN may still make runs differ slightly.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..fewshot.imageset import FewShotError
from ..fewshot.pixels import MIN_SIZE, load_image
from . import metrics as M
from .errors import EvaluationError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)   # ImageNet, as torchvision's ResNet18 weights


@dataclass
class FinetuneOptions:
    weights: str | None = None            # local ResNet18 state dict; None: random init
    epochs: tuple = (5, 10)
    lr: float = 1e-4
    batch_size: int = 32
    image_size: int = 224
    device: str | None = None             # None: cuda when available, else cpu
    seed: int = 0


@dataclass
class FinetuneResult:
    metrics: M.Metrics                    # of the best run
    epochs: int                           # the best run's epochs
    runs: dict = field(default_factory=dict)   # {epochs: {"accuracy", "macro_f1", "seconds"}}
    init: str = ""                        # "weights <file>" or "random init"
    device: str = "cpu"

    def as_dict(self) -> dict:
        return {"epochs": self.epochs, "init": self.init, "device": self.device, "runs": dict(self.runs),
                **self.metrics.as_dict()}


def _load(paths: Sequence[Path], size: int, what: str):
    import torch
    import torch.nn.functional as F

    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, path in enumerate(paths):
        try:
            arr = load_image(path, max(size, MIN_SIZE), "crop")
        except FewShotError as e:
            raise EvaluationError(path, f"{what} cannot be used: {str(e).removeprefix(f'{path}: ')}") from None
        x = torch.from_numpy(arr).permute(2, 0, 1)[None]
        if size < MIN_SIZE:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i] = (x[0] * 255.0).round().clamp(0, 255).to(torch.uint8)
    return out


def _batches(order, size: int) -> list:
    """``order`` cut into batches of ``size``; a last batch of one image joins the one before
    (batch norm cannot train on a single image)."""
    out = [order[s:s + size] for s in range(0, len(order), size)]
    if len(out) > 1 and len(out[-1]) == 1:
        import torch

        out[-2:] = [torch.cat(out[-2:])]
    return out


def _network(n_classes: int, weights: str | None):
    import torch
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    init = "random init"
    if weights:
        from ..scoring.clip_model import read_state_dict

        path = Path(weights).expanduser()
        if not path.is_file():
            raise EvaluationError(path, "ResNet18 weights file does not exist")
        try:
            state = read_state_dict(path)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}   # a new head per class set
            missing, unexpected = net.load_state_dict(state, strict=False)
        except (ValueError, RuntimeError) as e:
            raise EvaluationError(path, f"not a torchvision ResNet18 state dict ({' '.join(str(e).split())[:300]})") from None
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise EvaluationError(path, f"not a torchvision ResNet18 state dict: {len(missing)} missing and "
                                  f"{len(unexpected)} unexpected keys (e.g. {(missing + unexpected)[0]})")
        init = f"weights {path.name}"
    net.fc = torch.nn.Linear(net.fc.in_features, n_classes)
    return net, init


def finetune(train_paths: Sequence, train_labels, test_paths: Sequence, test_labels, classes: Sequence[str],
             options: FinetuneOptions | None = None,
             check_interrupt: Callable[[], None] = lambda: None) -> FinetuneResult:
    """Fine-tune on (train_paths, train_labels: class indices) and measure on the test images."""
    import torch
    from torchvision.transforms import v2

    o = options or FinetuneOptions()
    if not o.epochs or any(int(e) < 1 for e in o.epochs) or o.batch_size < 1 or not o.lr > 0:
        raise EvaluationError(None, f"fine-tune: epochs {o.epochs!r}, batch size {o.batch_size} and lr {o.lr} must be positive")
    if not 16 <= int(o.image_size) <= 1024:
        raise EvaluationError(None, f"fine-tune: image_size must be in 16..1024, got {o.image_size!r}")
    device = o.device or ("cuda" if torch.cuda.is_available() else "cpu")
    classes = tuple(classes)
    y_train = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
    y_test = np.asarray(test_labels, dtype=np.int64)
    if len(train_paths) < 2 or len(y_train) != len(train_paths):
        raise EvaluationError(None, f"fine-tune: {len(train_paths)} training images with {len(y_train)} labels; "
                              "needs at least 2 images, one label each")
    x_train = _load([Path(p) for p in train_paths], o.image_size, "training image")
    x_test = _load([Path(p) for p in test_paths], o.image_size, "test image")
    augment = v2.Compose([v2.RandomRotation(15), v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.5),
                          v2.RandomHorizontalFlip()])
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    def prepare(batch_u8, train: bool):
        x = batch_u8.to(device).float() / 255.0
        if train:
            x = torch.stack([augment(img) for img in x])
        return (x - mean) / std

    runs, best = {}, None
    for epochs in [int(e) for e in o.epochs]:
        start = time.perf_counter()
        torch.manual_seed(o.seed)
        net, init = _network(len(classes), o.weights)
        net = net.to(device)
        opt = torch.optim.Adam(net.parameters(), lr=o.lr)
        steps = epochs * len(_batches(torch.arange(len(y_train)), o.batch_size))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=o.lr, total_steps=steps)
        order = torch.Generator().manual_seed(o.seed)
        for _ in range(epochs):
            net.train()
            for idx in _batches(torch.randperm(len(y_train), generator=order), o.batch_size):
                check_interrupt()
                loss = torch.nn.functional.cross_entropy(net(prepare(x_train[idx], True)), y_train[idx].to(device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        preds = []
        with torch.inference_mode():
            for s in range(0, len(x_test), 64):
                preds.append(net(prepare(x_test[s:s + 64], False)).argmax(1).cpu().numpy())
        met = M.compute(y_test, np.concatenate(preds) if preds else np.zeros(0, np.int64), classes)
        runs[epochs] = {"accuracy": met.accuracy, "macro_f1": met.macro_f1,
                        "seconds": round(time.perf_counter() - start, 2)}
        if best is None or (met.macro_f1, met.accuracy) > (best[1].macro_f1, best[1].accuracy):
            best = (epochs, met)
    return FinetuneResult(best[1], best[0], runs, init, device)
