"""The real loaders read images/ as a labelled dataset: torchvision ImageFolder and HF datasets."""
import pytest
from dtgen.nodes.store.writer import DatasetWriter

from support.datasets import make_items


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    ds = tmp_path_factory.mktemp("loaders") / "ds"
    items = make_items(range(15))  # labels cat/dog/tea cup, every 4th rejected
    with DatasetWriter(ds) as w:
        w.write(items)
    accepted = {}
    for it in items:
        if it.accepted:
            accepted[it.label.replace(" ", "_")] = accepted.get(it.label.replace(" ", "_"), 0) + 1
    return ds, accepted


def test_torchvision_imagefolder(dataset):
    torchvision = pytest.importorskip("torchvision")
    ds, accepted = dataset
    folder = torchvision.datasets.ImageFolder(str(ds / "images"))
    assert folder.classes == sorted(accepted)
    counts = {c: 0 for c in folder.classes}
    for path, target in folder.samples:
        assert "/rejected/" not in path and path.split("/")[-2] == folder.classes[target]
        counts[folder.classes[target]] += 1
    assert counts == accepted


def test_hf_datasets_imagefolder(dataset, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ds, accepted = dataset
    # The documented one-line load: metadata.jsonl gives the columns, its `label` becomes a ClassLabel.
    train = datasets.load_dataset("imagefolder", data_dir=str(ds / "images"), split="train",
                                  cache_dir=str(tmp_path / "hf")).class_encode_column("label")
    names = train.features["label"].names
    assert names == sorted(accepted)
    assert {n: train["label"].count(i) for i, n in enumerate(names)} == accepted
    assert {"image", "prompt", "seed", "score", "reason", "id"} <= set(train.column_names)
    row = train[0]
    assert row["image"].size == (8, 8) and row["prompt"].startswith("a photo of item")
    # same class order as torchvision
    torchvision = pytest.importorskip("torchvision")
    assert torchvision.datasets.ImageFolder(str(ds / "images")).classes == names
