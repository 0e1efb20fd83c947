"""Evaluation test helpers (loaded as the module ``evalkit`` by conftest.py): colour-coded
classes (a red, a green and a blue class) whose mean colour separates them, a fake deterministic ``encode``
(mean colour + spread + a few pixels' deviations, ``DIM``-d) in place of CLIP,
ImageFolders of such images, and datasets written with the real ``DatasetWriter`` (synthetic items
from ``support.datasets.make_item`` with colour images and stored embeddings = the fake encoder's
features; real records through ``curation.real_images.import_real``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from dtgen.nodes.curation.real_images import import_real
from dtgen.nodes.fewshot.imageset import scan
from dtgen.nodes.fewshot.realset import make_set
from dtgen.nodes.store.writer import DatasetWriter
from PIL import Image
from support.datasets import make_item

CLASSES = ("blue", "green", "red")          # scan() order: sorted folder names
COLOURS = {"red": (0.85, 0.15, 0.1), "green": (0.15, 0.8, 0.2), "blue": (0.1, 0.2, 0.85)}
SIZE = 64
DIM = 8
TEXTURE = 6.0          # weight of the pixel deviations: distinct photos of a class are no near-duplicates


def colour_image(rgb, seed: int, size: int = SIZE, noise: float = 0.06) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.asarray(rgb, np.float32)[None, None, :] + noise * rng.standard_normal((size, size, 3)).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


class FakeEncoder:
    """Mean colour, spread, and the green deviations of the first 4 pixels of the top row (x
    ``TEXTURE``) per image: deterministic, separates the colour classes by the first 3, and two
    distinct noisy images of a class differ (cosine about 0.92, at most 0.975 over 190 pairs; below the leakage check's 0.99)
    while the same pixels give the same features; counts images."""

    def __init__(self):
        self.images = 0
        self.calls = 0

    def __call__(self, arrays) -> np.ndarray:
        self.calls += 1
        self.images += len(arrays)
        out = []
        for a in arrays:
            a = np.asarray(a, np.float32)
            assert a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.float32
            flat = a.reshape(-1, 3)
            mean = flat.mean(0)
            out.append(np.concatenate([mean, [flat.std()], TEXTURE * (a[0, :4, 1] - mean[1])]))
        return np.asarray(out, np.float32)


def save_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.round(image * 255), 0, 255).astype(np.uint8)).save(path)
    return path


def image_folder(root: Path, per_class: dict, seed: int = 0, colours=COLOURS) -> Path:
    """``root/<label>/<label>_<i>.png`` colour images; per_class {label: n}."""
    for label, n in per_class.items():
        for i in range(n):
            save_png(root / label / f"{label}_{i}.png", colour_image(colours[label], seed * 1000 + 100 * sum(map(ord, label)) + i))
    return root


def synthetic_item(i: int, label: str, rgb=None, score: float = 0.3, accepted: bool = True, source: str | None = None,
                   stored_embedding: str = "match", labels=CLASSES):
    """A make_item with a colour image of ``rgb`` (default its class colour), labelled ``label``."""
    item = make_item(i, labels=labels)
    item.label = label
    item.image = colour_image(COLOURS[label] if rgb is None else rgb, 50_000 + i)
    item.score, item.accepted = float(score), bool(accepted)
    item.reason = "ok" if accepted else "below_threshold"
    if source is not None:
        item.metadata = {**item.metadata, "source": source}
    if stored_embedding == "match":
        item.embedding = FakeEncoder()([item.image])[0]
    elif stored_embedding == "random":
        item.embedding = np.random.default_rng(i).standard_normal(DIM).astype(np.float32)
    else:
        item.embedding = None
    return item


def write_dataset(ds: Path, items, real_root: Path | None = None) -> Path:
    with DatasetWriter(ds) as w:
        if items:
            w.write(list(items))
        if real_root is not None:
            import_real(w, make_set(real_root, scan(real_root), lambda label: f"a photo of {label}", size=SIZE,
                                    part="all"))
    return ds


def tree_state(root: Path) -> dict:
    """{relative path: (size, mtime_ns, bytes hash)} of every file under ``root``."""
    import hashlib
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out
