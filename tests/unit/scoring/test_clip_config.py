"""Custom CLIP architectures from a config JSON next to the weights: built, loaded strictly, and
refused (naming the file and field) when the config or the weights do not fit."""
import json

import pytest
from dtgen.nodes.scoring import clip_config
from dtgen.nodes.scoring.clip_model import check_arch, load_clip
from dtgen.nodes.scoring.errors import ClipFilterError

TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(autouse=True)
def _model_cache_untouched():
    """The models loaded here leave load_clip's small LRU cache as they found it (other modules
    rely on their session model staying cached)."""
    from dtgen.nodes.scoring import clip_model

    saved = clip_model._CACHE.copy()
    yield
    with clip_model._CACHE_LOCK:
        clip_model._CACHE.clear()
        clip_model._CACHE.update(saved)


def _save(model, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _tiny(folder, cfg=TINY, seed=0, name="tiny.safetensors"):
    import open_clip
    import torch

    torch.manual_seed(seed)
    return _save(open_clip.CLIP(**cfg), folder / name)


def test_wrapper_config_builds_and_loads_strictly(tmp_path):
    import torch
    from dtgen.nodes.scoring.similarity import TextEmbeddingCache, encode_images
    from safetensors.torch import load_file

    weights = _tiny(tmp_path)
    (tmp_path / "tiny.json").write_text(json.dumps({
        "arch": "dtgen-tiny", "model_cfg": TINY,
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}}))
    bundle = load_clip("dtgen-tiny", str(weights))
    assert bundle.arch == "dtgen-tiny" and bundle.image_size == (32, 32)
    assert bundle.mean == (0.5, 0.5, 0.5) and bundle.std == (0.25, 0.25, 0.25)
    assert bundle.interpolation == "bilinear" and bundle.resize_mode == "shortest"
    assert bundle.extra["custom"]["config"] == "tiny.json"
    assert bundle.describe()["config"] == "tiny.json" and len(bundle.describe()["config_sha256"]) == 12
    saved, loaded = load_file(str(weights)), bundle.model.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert not bundle.model.training
    assert bundle.tokenizer(["a photo of fabric"]).shape == (1, 8)   # the config's context length
    assert encode_images(bundle, [torch.rand(40, 48, 3).numpy()]).shape == (1, 16)
    assert TextEmbeddingCache(bundle).encode(["a photo of fabric"]).shape == (1, 16)
    assert load_clip("dtgen-tiny", str(weights)) is bundle                # cached
    assert check_arch("dtgen-tiny", str(weights)) == "dtgen-tiny"


def test_bare_config_and_hf_config_name_the_arch_by_the_weights_stem(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    weights = _tiny(tmp_path / "a", name="fabric-clip.safetensors")
    (tmp_path / "a" / "fabric-clip.json").write_text(json.dumps(TINY))
    assert load_clip("fabric-clip", str(weights)).arch == "fabric-clip"
    weights = _tiny(tmp_path / "b", name="open_clip_model.safetensors")
    (tmp_path / "b" / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY, "preprocess_cfg": {}}))
    assert load_clip("open_clip_model", str(weights)).image_size == (32, 32)


def test_editing_the_config_reloads(tmp_path):
    import os

    weights = _tiny(tmp_path)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"arch": "t", "model_cfg": TINY}))
    first = load_clip("t", str(weights))
    config.write_text(json.dumps({"arch": "t", "model_cfg": TINY,
                                  "preprocess_cfg": {"mean": [0.1, 0.2, 0.3]}}))
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    second = load_clip("t", str(weights))
    assert second is not first and second.mean == (0.1, 0.2, 0.3)


def test_mismatched_weights_are_refused_naming_both_files(tmp_path):
    other = {**TINY, "vision_cfg": {**TINY["vision_cfg"], "width": 64}}
    weights = _tiny(tmp_path, cfg=other)
    (tmp_path / "tiny.json").write_text(json.dumps({"arch": "t", "model_cfg": TINY}))
    with pytest.raises(ClipFilterError) as err:
        load_clip("t", str(weights))
    text = str(err.value)
    assert text.startswith(str(weights)) and "tiny.json" in text
    assert "0 missing, 0 unexpected" in text and "shape-mismatched" in text
    assert "visual.class_embedding" in text   # the first mismatched key, as an example


def test_weights_missing_a_tensor_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    weights = _tiny(tmp_path)
    state = load_file(str(weights))
    del state["text_projection"]
    save_file(state, str(weights))
    (tmp_path / "tiny.json").write_text(json.dumps({"arch": "t", "model_cfg": TINY}))
    with pytest.raises(ClipFilterError, match=r"1 missing, 0 unexpected.*text_projection"):
        load_clip("t", str(weights))


def test_oversize_config_is_refused_before_building(tmp_path, monkeypatch):
    import open_clip.model

    def no_build(*a, **k):
        raise AssertionError("the model was built")

    monkeypatch.setattr(open_clip.model.CLIP, "__init__", no_build)
    weights = tmp_path / "huge.safetensors"
    weights.write_bytes(b"x")     # never read: the config is refused first
    huge = {**TINY, "vision_cfg": {**TINY["vision_cfg"], "width": 8192, "layers": 64, "head_width": 64}}
    (tmp_path / "huge.json").write_text(json.dumps(huge))
    with pytest.raises(ClipFilterError, match=r"about 51,\d{3} M parameters; at most 2,000 M") as err:
        load_clip("huge", str(weights))
    assert str(err.value).startswith(str(tmp_path / "huge.json"))


@pytest.mark.parametrize("change,message", [
    ({"embed_dim": 100000}, r"field embed_dim=100000 is outside \[1, 8192\]"),
    ({"embed_dim": True}, r"field embed_dim=True must be an integer"),
    ({"vision_cfg": {**TINY["vision_cfg"], "widht": 32}}, r"unknown field vision_cfg\.widht"),
    ({"vision_cfg": {**TINY["vision_cfg"], "timm_model_name": "vit_base_patch16_224"}}, "timm vision towers"),
    ({"text_cfg": {**TINY["text_cfg"], "hf_tokenizer_name": "bert-base-uncased"}}, "Hugging Face tokenizers"),
    ({"text_cfg": {**TINY["text_cfg"], "vocab_size": 1000}}, r"text_cfg\.vocab_size=1000 is outside"),
    ({"text_cfg": {**TINY["text_cfg"], "width": 33}}, r"text_cfg\.width=33 must be a multiple of heads=2"),
    ({"vision_cfg": {**TINY["vision_cfg"], "image_size": 2048, "patch_size": 8}}, "65536 patches"),
    ({"vision_cfg": {**TINY["vision_cfg"], "layers": [1, 2]}}, r"list of 4 integers, got 2"),
    ({"vision_cfg": {**TINY["vision_cfg"], "act_kwargs": {"a": {"b": 1}}}}, "nested|scalar options"),
    ({"multimodal_cfg": {"width": 8}}, "CoCa models are not supported"),
    ({"vision_cfg": {**TINY["vision_cfg"], "output_tokens": True}}, "pooled embedding only"),
    ({"vision_cfg": {**TINY["vision_cfg"], "image_size": 32, "patch_size": 64}}, "exceeds image_size"),
    ({"init_logit_scale": float("inf")}, "not valid JSON"),
    ({"text_cfg": None}, r"field text_cfg must be an object"),
])
def test_bad_fields_are_named(tmp_path, change, message):
    weights = _tiny(tmp_path)
    (tmp_path / "tiny.json").write_text(json.dumps({**TINY, **change}))
    with pytest.raises(ClipFilterError, match=message) as err:
        load_clip("tiny", str(weights))
    assert str(tmp_path / "tiny.json") in str(err.value)


@pytest.mark.parametrize("text,message", [
    ("[" * 20000 + "]" * 20000, "nested too deeply"),
    ('{"model_cfg": ' * 3000 + "1" + "}" * 3000, "nested too deeply"),
    ('{"model_cfg": {"a": {"b": {"c": {"d": 1}}}}}', r"nested 5 levels deep"),
    ("[1, 2]", "must be a JSON object"),
    ('{"embed_dim": NaN}', "not valid JSON"),
    ("\xff\xfe", "not valid JSON"),
    ('{"model_cfg": {}, "extra": 1}', r"unknown field extra"),
])
def test_hostile_config_files(tmp_path, text, message):
    weights = _tiny(tmp_path)
    (tmp_path / "tiny.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ClipFilterError, match=message):
        load_clip("tiny", str(weights))


def test_config_file_size_is_limited(tmp_path):
    weights = _tiny(tmp_path)
    (tmp_path / "tiny.json").write_text(json.dumps(TINY) + " " * clip_config.MAX_CONFIG_BYTES)
    with pytest.raises(ClipFilterError, match="at most 65536 bytes"):
        load_clip("tiny", str(weights))


def test_arch_must_match_the_config(tmp_path):
    weights = _tiny(tmp_path)
    (tmp_path / "tiny.json").write_text(json.dumps({"arch": "fabric", "model_cfg": TINY}))
    with pytest.raises(ClipFilterError, match=r"describes architecture 'fabric', not 'tiny'; pass arch='fabric'"):
        load_clip("tiny", str(weights))
    with pytest.raises(ClipFilterError, match=r"field arch='a b' must be"):
        (tmp_path / "tiny.json").write_text(json.dumps({"arch": "a b", "model_cfg": TINY}))
        check_arch("a b", str(weights))


def test_unknown_arch_without_config_says_where_a_config_would_go(tmp_path):
    weights = _tiny(tmp_path)
    with pytest.raises(ClipFilterError,
                       match=r"unknown CLIP architecture 'tiny'.*tiny\.json or open_clip_config\.json"):
        load_clip("tiny", str(weights))
    with pytest.raises(ClipFilterError, match="unknown CLIP architecture 'tiny'"):
        check_arch("tiny")   # no weights given: only built-in names


def test_builtin_names_ignore_a_config_beside_the_weights(tmp_path, vitb32_path, bundle):
    import shutil

    weights = tmp_path / "ViT-B-32.safetensors"
    shutil.copy(vitb32_path, weights)
    (tmp_path / "ViT-B-32.json").write_text(json.dumps({"arch": "ViT-B-32", "model_cfg": TINY}))
    assert load_clip("ViT-B-32", str(weights)).image_size == (224, 224)
    assert check_arch("ViT-B-32", str(weights)) == "ViT-B-32"


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-L-14", "RN50", "ViT-B-16-quickgelu"])
def test_parameter_estimate_matches_open_clip(name):
    import open_clip
    import torch

    cfg = open_clip.get_model_config(name)
    checked = clip_config._check_model_cfg(cfg, "", name)
    with torch.device("meta"):   # counts parameters without allocating them
        model = open_clip.CLIP(**checked)
    assert clip_config.estimate_params(checked) == sum(p.numel() for p in model.parameters())
