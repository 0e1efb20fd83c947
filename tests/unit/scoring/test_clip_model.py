"""Loading CLIP weights from local files: success, cache, and every kind of bad file."""
import pickle

import pytest
from dtgen.nodes.scoring.clip_model import ClipBundle, find_cached_weights, load_clip
from dtgen.nodes.scoring.errors import ClipFilterError


def test_loads_weights_and_describes_them(bundle, vitb32_path):
    import hashlib

    import torch
    from safetensors.torch import load_file

    assert isinstance(bundle, ClipBundle)
    assert bundle.arch == "ViT-B-32" and bundle.image_size == (224, 224)
    assert bundle.weights_name == vitb32_path.name
    assert bundle.weights_sha256 == hashlib.sha256(vitb32_path.read_bytes()).hexdigest()[:12]
    saved = load_file(str(vitb32_path))
    loaded = bundle.model.state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in ("visual.conv1.weight", "text_projection"))
    assert not bundle.model.training


def test_second_load_comes_from_cache(bundle, vitb32_path):
    assert load_clip("ViT-B-32", str(vitb32_path)) is bundle


def test_unknown_architecture_lists_close_names(vitb32_path):
    with pytest.raises(ClipFilterError, match=r"unknown CLIP architecture 'ViT-B32'.*ViT-B-32"):
        load_clip("ViT-B32", str(vitb32_path))


def test_missing_file_names_folder_and_expected_file(tmp_path):
    (tmp_path / "other.safetensors").write_bytes(b"x")
    with pytest.raises(ClipFilterError) as err:
        load_clip("ViT-B-32", str(tmp_path / "clip_vit_b32.safetensors"))
    message = str(err.value)
    assert "'clip_vit_b32.safetensors' not found" in message
    assert str(tmp_path) in message and "other.safetensors" in message


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(ClipFilterError, match="does not exist"):
        load_clip("ViT-B-32", str(tmp_path / "nope" / "w.safetensors"))


def test_wrong_architecture_reports_mismatch_counts(tmp_path, bundle):
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    other = open_clip.create_model("ViT-B-16", pretrained=None).state_dict()
    path = tmp_path / "vit_b16.safetensors"
    save_file({k: v.half().contiguous() for k, v in other.items()}, str(path))  # half: smaller file
    expected = bundle.model.state_dict()
    n_shape = sum(tuple(other[k].shape) != tuple(v.shape) for k, v in expected.items() if k in other)
    assert n_shape > 0
    with pytest.raises(ClipFilterError) as err:
        load_clip("ViT-B-32", str(path))
    assert f"0 missing, 0 unexpected, {n_shape} shape-mismatched of {len(expected)}" in str(err.value)
    assert "visual.conv1.weight" in str(err.value)


def test_dropped_keys_are_counted_in_a_pt_checkpoint(tmp_path, vitb32_path):
    """Also covers the .pt path: {"state_dict": ...} wrapper and DDP "module." prefixes."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(vitb32_path))
    del state["text_projection"], state["logit_scale"]
    state["extra.head"] = state["positional_embedding"].clone()
    path = tmp_path / "partial.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, str(path))
    with pytest.raises(ClipFilterError, match="2 missing, 1 unexpected, 0 shape-mismatched"):
        load_clip("ViT-B-32", str(path))


@pytest.mark.parametrize("name,content", [
    ("cut.safetensors", None), ("junk.pt", b"\x00not a torch file" * 20), ("empty.bin", b""),
    ("html.bin", b"<html>rate limited</html>"),   # an error page saved under a weights name
])
def test_corrupt_files_are_reported(tmp_path, vitb32_path, name, content):
    path = tmp_path / name
    path.write_bytes(vitb32_path.read_bytes()[:5000] if content is None else content)
    with pytest.raises(ClipFilterError, match="corrupt|empty") as err:
        load_clip("ViT-B-32", str(path))
    assert name in str(err.value)


def test_pickle_with_python_objects_is_refused(tmp_path):
    import torch

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "opt": pickle.PicklingError}, str(path))
    with pytest.raises(ClipFilterError, match="refusing to unpickle"):
        load_clip("ViT-B-32", str(path))


def test_bad_dtype_and_suffix(tmp_path, vitb32_path):
    with pytest.raises(ClipFilterError, match="unknown dtype"):
        load_clip("ViT-B-32", str(vitb32_path), dtype="int4")
    odd = tmp_path / "w.onnx"
    odd.write_bytes(b"1")
    with pytest.raises(ClipFilterError, match="unsupported weights file type"):
        load_clip("ViT-B-32", str(odd))


def test_find_cached_weights_looks_in_hf_and_clip_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert find_cached_weights("ViT-B-32", "laion2b_s34b_b79k") is None
    snap = tmp_path / "hf" / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "open_clip_pytorch_model.bin").write_bytes(b"1")
    assert find_cached_weights("ViT-B-32", "laion2b_s34b_b79k").endswith("open_clip_pytorch_model.bin")
    (snap / "open_clip_model.safetensors").write_bytes(b"1")
    assert find_cached_weights("ViT-B-32", "laion2b_s34b_b79k").endswith("open_clip_model.safetensors")

    clip_dir = tmp_path / "home" / ".cache" / "clip"
    clip_dir.mkdir(parents=True)
    assert find_cached_weights("RN50", "openai") is None
    (clip_dir / "RN50.pt").write_bytes(b"1")
    assert find_cached_weights("RN50", "openai") == str(clip_dir / "RN50.pt")


def test_find_cached_weights_unknown_tag():
    with pytest.raises(ClipFilterError, match="unknown pretrained tag 'nope'.*openai"):
        find_cached_weights("ViT-B-32", "nope")
