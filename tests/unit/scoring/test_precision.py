"""Encoder precision per device (auto | fp32 | fp16 | bf16), CPU bf16 detection, bf16 accuracy on
real photos, preprocessing on the model's device vs open_clip's PIL transform, and the precision
reaching each manifest record through the real dataset writer."""
import json

import numpy as np
import pytest
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.scoring.errors import ClipFilterError
from dtgen.nodes.scoring.precision import (
    CpuBf16,
    cpu_bf16,
    detect_cpu_bf16,
    parse_cpuinfo_flags,
    precision_of,
    resolve_precision,
)

NATIVE = CpuBf16(True, ("avx512_bf16",), "test")
NO_BF16 = CpuBf16(False, (), "test")
needs_native_bf16 = pytest.mark.skipif(not cpu_bf16().native,
                                       reason="this CPU has no native bf16 (amx_bf16 / avx512_bf16)")
# scikit-image's bundled photos (no download): colour and gray, natural, microscopy, text, texture
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "brick", "grass",
          "gravel", "retina", "immunohistochemistry", "hubble_deep_field", "page", "text", "logo"]


@pytest.fixture(autouse=True, scope="module")
def _keep_model_cache():
    """These tests load other precisions (and the tiny CLIP): leave load_clip's LRU cache as found."""
    from dtgen.nodes.scoring import clip_model

    saved = clip_model._CACHE.copy()
    yield
    with clip_model._CACHE_LOCK:
        clip_model._CACHE.clear()
        clip_model._CACHE.update(saved)


def photos() -> list[np.ndarray]:
    from support.tiny_clip import photo

    return [photo(name) for name in PHOTOS]


def cosines(a, b) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# ----------------------------------------------------------------------------- detection
CPUINFO = """processor\t: 0
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile
processor\t: 1
flags\t\t: fpu sse2 avx2 {second}
"""


def test_cpuinfo_flags_count_only_when_every_core_has_them(tmp_path):
    assert parse_cpuinfo_flags(CPUINFO.format(second="avx512f avx512_bf16")) == {
        "fpu", "sse2", "avx2", "avx512f", "avx512_bf16"}
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO.format(second=""))   # a hybrid CPU whose second core lacks AVX-512
    found = detect_cpu_bf16(path, system="Linux")
    assert found == CpuBf16(False, (), str(path))
    path.write_text(CPUINFO.format(second="amx_bf16 avx512_bf16"))
    assert detect_cpu_bf16(path, system="Linux") == CpuBf16(True, ("avx512_bf16",), str(path))


def test_avx2_only_cpu_gets_fp32(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    cpu = detect_cpu_bf16(path, system="Linux")
    assert not cpu.native and resolve_precision("auto", "cpu", cpu=cpu) == "fp32"


def test_other_systems_ask_torch_and_unknown_means_fp32(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "amx_bf16": True})
    assert detect_cpu_bf16(system="Darwin") == CpuBf16(True, ("amx_bf16",), "torch.cpu.get_capabilities")

    def broken():
        raise RuntimeError("cpuinfo failed")

    monkeypatch.setattr(torch.cpu, "get_capabilities", broken)
    unknown = detect_cpu_bf16(system="Windows")
    assert unknown == CpuBf16(False, (), "unknown")
    assert resolve_precision("auto", "cpu", cpu=unknown) == "fp32"


def test_this_machine_is_read_from_proc_cpuinfo():
    import platform
    from pathlib import Path

    if platform.system() != "Linux":
        pytest.skip("Linux only")
    flags = parse_cpuinfo_flags(Path("/proc/cpuinfo").read_text())
    found = cpu_bf16()
    assert found.source == "/proc/cpuinfo"
    assert found.native == bool({"amx_bf16", "avx512_bf16"} & flags)
    assert resolve_precision("auto", "cpu") == ("bf16" if found.native else "fp32")


# ----------------------------------------------------------------------------- the rule
@pytest.mark.parametrize("requested, device, kwargs, expected", [
    ("auto", "cpu", {"cpu": NATIVE}, "bf16"),
    ("auto", "cpu", {"cpu": NO_BF16}, "fp32"),
    (None, "cpu", {"cpu": NO_BF16}, "fp32"),
    ("fp32", "cpu", {"cpu": NATIVE}, "fp32"),
    ("bf16", "cpu", {"cpu": NATIVE}, "bf16"),
    ("auto", "cuda:0", {}, "fp16"),
    ("AUTO", "cuda", {"gpu_fp16": False}, "fp32"),   # ComfyUI: no fast fp16 on this GPU
    ("fp16", "cuda:1", {}, "fp16"),
    ("bf16", "cuda", {"cuda_bf16": True}, "bf16"),
    ("fp32", "cuda", {}, "fp32"),
    ("auto", "mps", {}, "fp16"),
])
def test_resolution(requested, device, kwargs, expected):
    assert resolve_precision(requested, device, **kwargs) == expected


@pytest.mark.parametrize("requested, device, kwargs, match", [
    ("fp16", "cpu", {"cpu": NO_BF16}, r"fp16 on the CPU: .*emulated.*pick auto or fp32$"),
    ("fp16", "cpu", {"cpu": NATIVE}, r"pick auto or fp32, or bf16 \(this CPU has avx512_bf16\)"),
    ("bf16", "cpu", {"cpu": NO_BF16}, r"bf16 on this CPU: no native bf16 found .*6x slower.*pick auto or fp32"),
    ("bf16", "cuda:0", {"cuda_bf16": False}, r"bf16 on cuda:0: this GPU has no native bf16.*pick auto or fp16"),
    ("fp8", "cpu", {}, r"unknown precision 'fp8'; use one of auto, fp32, fp16, bf16"),
])
def test_impossible_choices_are_refused_with_what_to_pick(requested, device, kwargs, match):
    with pytest.raises(ClipFilterError, match=match) as err:
        resolve_precision(requested, device, **kwargs)
    assert err.value.location == "precision"


def test_precision_names():
    import torch

    assert [precision_of(d) for d in (torch.float32, torch.float16, torch.bfloat16)] == ["fp32", "fp16", "bf16"]
    assert precision_of("bfloat16") == "bf16"


# ----------------------------------------------------------------------------- accuracy
def test_on_device_preprocessing_matches_open_clip_pil_transform(bundle):
    """Old path (open_clip's PIL transform, one image at a time, as DTGen's code filters) vs the
    batched torch path. Measured on these 16 photos: cosine min 0.999987, mean 0.999998 (the tiny
    trained CLIP on 64 photos + textiles: min 0.999962). The difference: PIL rounds to 8 bits
    after its bicubic resize, the torch path stays float32 (same antialiased bicubic kernel)."""
    import open_clip
    import torch
    from dtgen.nodes.scoring.similarity import encode_images
    from PIL import Image

    images = photos()
    pil = open_clip.image_transform(bundle.image_size, is_train=False, mean=bundle.mean, std=bundle.std)
    with torch.inference_mode():
        x = torch.stack([pil(Image.fromarray((a * 255).round().astype(np.uint8))) for a in images])
        old = torch.nn.functional.normalize(bundle.model.encode_image(x), dim=-1).numpy()
    new = encode_images(bundle, images, batch_size=8)   # mixed sizes: several uploads per batch
    assert len({a.shape for a in images}) > 4
    assert cosines(old, new).min() >= 0.9999


def test_plain_function_takes_a_comfy_image_batch(bundle, vitb32_path):
    """encode_image_batch (for GPU scripts) on an N x H x W x 3 tensor = the bundle path."""
    import copy

    import torch
    from dtgen.nodes.scoring.similarity import encode_image_batch, encode_images

    images = [a[:200, :200] for a in photos()[:6]]
    batch = torch.from_numpy(np.stack(images))
    model = copy.deepcopy(bundle.model)
    got = encode_image_batch(model, batch, precision="fp32", device="cpu", batch_size=4)
    np.testing.assert_allclose(got, encode_images(bundle, images), atol=1e-5)
    assert got.dtype == np.float32
    with pytest.raises(ClipFilterError, match="fp16 on the CPU"):
        encode_image_batch(model, batch, precision="fp16", device="cpu")


def _bf16_vs_fp32(arch, path, images, texts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import torch
    from dtgen.nodes.scoring.clip_model import load_clip
    from dtgen.nodes.scoring.similarity import TextEmbeddingCache, encode_images

    fp32, bf16 = load_clip(arch, path), load_clip(arch, path, dtype="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16") and fp32 is not bf16
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    a, b = encode_images(fp32, images, 8), encode_images(bf16, images, 8)
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    ta, tb = TextEmbeddingCache(fp32).encode(texts), TextEmbeddingCache(bf16).encode(texts)
    return cosines(a, b), cosines(ta, tb), np.abs(a @ ta.T - b @ tb.T)


@needs_native_bf16
def test_bf16_embeddings_match_fp32_random_vit_b32(vitb32_path):
    """Random-init ViT-B-32 (real shape), 16 real photos. Measured: image cosine min 0.999949,
    text min 0.999924; scores differ by up to 2e-3 (mean 5e-4)."""
    from support.tiny_clip import PHOTOS as CAPTIONS

    img, txt, score = _bf16_vs_fp32("ViT-B-32", str(vitb32_path), photos(), list(CAPTIONS.values()))
    assert img.min() >= 0.9999 and txt.min() >= 0.9999, (img.min(), txt.min())
    assert score.max() < 5e-3


@pytest.mark.slow   # the first run trains the fixture model (cached after)
@needs_native_bf16
def test_bf16_embeddings_match_fp32_trained_tiny_clip():
    """The trained tiny CLIP on photos and held-out textile images. Measured: image cosine min
    0.999978, text min 0.999988; scores (spread 0.45) differ by up to 3.8e-3 (mean 1e-3)."""
    from support.tiny_clip import PHOTOS as CAPTIONS
    from support.tiny_clip import TEXTILE, data_missing, held_out, load_image, tiny_clip

    if data_missing():
        pytest.skip(f"needs {data_missing()}")
    folder, arch, weights, _ = tiny_clip(quiet=True)
    images = photos() + [load_image(p) for label in TEXTILE for p in held_out(label, 16)]
    img, txt, score = _bf16_vs_fp32(arch, str(folder / weights), images,
                                    list(CAPTIONS.values()) + list(TEXTILE.values()))
    assert img.min() >= 0.9999 and txt.min() >= 0.9999, (img.min(), txt.min())
    assert score.max() < 1e-2


# ----------------------------------------------------------------------------- provenance
def test_manifest_record_names_the_precision_and_device_that_ran(tmp_path, vitb32_path):
    from dtgen.nodes.scoring.clip_model import load_clip
    from dtgen.nodes.scoring.similarity import score_items
    from dtgen.nodes.store.writer import DatasetWriter

    ran = resolve_precision("auto", "cpu")   # bf16 on a CPU with native bf16, else fp32
    bundle = load_clip("ViT-B-32", str(vitb32_path), dtype=ran)
    images = photos()[:3]
    items = [ScoredItem(image=np.ascontiguousarray(a[:64, :64]), label="cup", prompt=f"a cup {i}", index=i,
                        accepted=True, reason="ok") for i, a in enumerate(images)]
    score_items(bundle, items, "prompt")
    assert {(it.extra["clip_precision"], it.extra["clip_device"]) for it in items} == {(ran, "cpu")}
    with DatasetWriter(tmp_path / "ds") as writer:
        writer.write(items)
    records = [json.loads(line) for line in (tmp_path / "ds" / "manifest.jsonl").read_text().splitlines()
               if line.strip()]
    written = [r for r in records if r.get("event") == "write"]
    assert len(written) == 3
    assert all(r["extra"]["clip_precision"] == ran and r["extra"]["clip_device"] == "cpu" for r in written)
    assert bundle.describe()["precision"] == ran


def test_load_clip_takes_a_precision_and_caches_per_precision(bundle, vitb32_path):
    from dtgen.nodes.scoring.clip_model import load_clip

    fp32 = load_clip("ViT-B-32", str(vitb32_path), precision="fp32")
    assert fp32.precision == "fp32" and load_clip("ViT-B-32", str(vitb32_path), dtype="float32") is fp32
    with pytest.raises(ClipFilterError, match="fp16 on the CPU"):
        load_clip("ViT-B-32", str(vitb32_path), precision="fp16")
    with pytest.raises(ClipFilterError, match="dtype or precision, not both"):
        load_clip("ViT-B-32", str(vitb32_path), dtype="fp32", precision="fp32")
    auto = load_clip("ViT-B-32", str(vitb32_path), precision="auto")
    assert auto.precision == resolve_precision("auto", "cpu")
    assert (auto is fp32) == (auto.precision == "fp32")
