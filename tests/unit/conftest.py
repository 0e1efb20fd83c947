"""Unit-test fixtures: a random-init ViT-B-32 saved as safetensors once per session, a seeded rng,
twelve tiny scored items."""
import numpy as np
import pytest
from support.datasets import make_items


@pytest.fixture(scope="session")
def vitb32_path(tmp_path_factory):
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = tmp_path_factory.mktemp("clip") / "vit_b32_random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def bundle(vitb32_path):
    import torch
    from dtgen.nodes.scoring.clip_model import load_clip

    torch.set_num_threads(2)
    return load_clip("ViT-B-32", str(vitb32_path))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def items():
    return make_items(range(12))
