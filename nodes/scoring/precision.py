"""Which floating-point precision the CLIP encoders run in, per device (no ComfyUI, torch lazily).

``auto`` (the default) picks:
  - CUDA / XPU / MPS: fp16 (the model's weights cast to float16, as OpenAI's own CLIP runs on a GPU),
    unless the caller says the GPU has no fast fp16 (ComfyUI's ``should_use_fp16``), then fp32;
  - CPU: bf16 only where the CPU computes it natively (``amx_bf16`` or ``avx512_bf16``), else fp32.
    Without them PyTorch emulates bf16 (measured 6x slower than fp32 on an AVX2-only CPU).

How the CPU is asked: on Linux the ``flags`` lines of /proc/cpuinfo (what the kernel enables, which
matters for AMX); elsewhere ``torch.cpu.get_capabilities()`` (cpuinfo's CPUID reading, torch >= 2.x);
no answer means fp32. Never assumed.

Half precision is a cast of the whole model (weights and activations), not autocast: on the CPU,
bf16 autocast is slower than fp32 (bench: 0.5-0.7x) because under autocast nn.MultiheadAttention
leaves its fused path and the unfused one spends its time in copies (profiled, torch 2.14:
aten::copy_ 47 % of the time, mostly inside the in-projection's bmm); with the weights in bf16 the
fused path runs. The embedding cosines vs fp32 of the two ways are the same (bench). Embeddings
always leave the encoders as float32 and are L2-normalised in float32 (``similarity``).
Accuracy (bench/bench_clip_filter.py, tests/unit/scoring/test_precision.py), bf16 vs fp32 on real
photos: image embeddings cosine min 0.99994 (random-init ViT-B-32) / 0.99998 (the trained tiny
CLIP), text min 0.99992 / 0.99999; scores differ by up to ~2e-3 (~4e-3 for the tiny CLIP), so
images right at a class threshold can land on the other side (bench: 3 of 256 decisions).
Speed on 2 cores of an AVX-512 BF16 AMD EPYC: image encoder 2.4x fp32, the whole filter 1.5x.
Measured without trained ViT-B-32 weights (none can be downloaded here): a trained model may differ.
"""
from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

from .errors import ClipFilterError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")   # either means bf16 dot products in hardware
GPU_TYPES = ("cuda", "xpu", "mps")
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuBf16:
    """Whether this CPU computes bf16 natively, which of ``CPU_BF16_FLAGS`` it has, and who said so."""

    native: bool
    flags: tuple[str, ...]
    source: str   # "/proc/cpuinfo" | "torch.cpu.get_capabilities" | "unknown"

    def describe(self) -> str:
        found = ", ".join(self.flags) if self.flags else "none of " + ", ".join(CPU_BF16_FLAGS)
        return f"{found} (from {self.source})"


def parse_cpuinfo_flags(text: str) -> set[str]:
    """Flags every processor of a /proc/cpuinfo text lists (the intersection: on a hybrid CPU a
    feature counts only when all cores have it)."""
    common = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            flags = set(value.split())
            common = flags if common is None else common & flags
    return common or set()


def detect_cpu_bf16(cpuinfo: Path | None = CPUINFO, system: str | None = None) -> CpuBf16:
    """Ask the CPU now (uncached; ``cpu_bf16`` caches). ``cpuinfo``/``system``: for tests."""
    system = platform.system() if system is None else system
    if system == "Linux" and cpuinfo is not None:
        try:
            flags = parse_cpuinfo_flags(cpuinfo.read_text(errors="replace"))
        except OSError:
            flags = set()
        if flags:
            found = tuple(f for f in CPU_BF16_FLAGS if f in flags)
            return CpuBf16(bool(found), found, str(cpuinfo))
    try:
        import torch

        caps = dict(torch.cpu.get_capabilities())
    except (ImportError, AttributeError, RuntimeError):   # no torch, an older one, or cpuinfo failed
        return CpuBf16(False, (), "unknown")
    found = tuple(f for f in CPU_BF16_FLAGS if caps.get(f))
    return CpuBf16(bool(found), found, "torch.cpu.get_capabilities")


@functools.lru_cache(maxsize=1)
def cpu_bf16() -> CpuBf16:
    """``detect_cpu_bf16()``, asked once per process."""
    return detect_cpu_bf16()


def device_type(device) -> str:
    """"cuda" for "cuda:1" or torch.device("cuda", 1); "cpu" for None."""
    return (getattr(device, "type", None) or str(device or "cpu")).split(":")[0].lower()


def resolve_precision(requested: str | None, device, *, gpu_fp16: bool | None = None,
                      cpu: CpuBf16 | None = None, cuda_bf16: bool | None = None) -> str:
    """The precision that will run: "fp32" | "fp16" | "bf16"; ClipFilterError for one that cannot.

    ``requested``: one of ``PRECISIONS`` (None = auto). ``gpu_fp16``: False when the GPU has no
    fast fp16 (then auto picks fp32); None = assume it has. ``cpu`` / ``cuda_bf16``: the CPU's and
    the GPU's bf16 support, asked of the hardware when None.
    """
    name = "auto" if requested is None else str(requested).strip().lower()
    if name not in PRECISIONS:
        raise ClipFilterError(f"unknown precision {requested!r}; use one of {', '.join(PRECISIONS)}",
                              "precision")
    kind = device_type(device)
    if kind == "cpu":
        cpu = cpu_bf16() if cpu is None else cpu
        if name == "auto":
            return "bf16" if cpu.native else "fp32"
        if name == "fp16":
            raise ClipFilterError(
                "fp16 on the CPU: PyTorch has no fast fp16 matrix multiply on CPUs (it is emulated, far "
                "slower than fp32); pick auto or fp32" + (", or bf16 (this CPU has " + ", ".join(cpu.flags)
                                                           + ")" if cpu.native else ""), "precision")
        if name == "bf16" and not cpu.native:
            raise ClipFilterError(
                f"bf16 on this CPU: no native bf16 found ({cpu.describe()}), so PyTorch would emulate it "
                f"(measured 6x slower than fp32 on an AVX2-only CPU); pick auto or fp32", "precision")
        return name
    if name == "auto":
        if kind in GPU_TYPES:
            return "fp32" if gpu_fp16 is False else "fp16"
        return "fp32"
    if name == "bf16" and kind == "cuda":
        if cuda_bf16 is None:
            import torch

            cuda_bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
        if not cuda_bf16:
            raise ClipFilterError(f"bf16 on {device}: this GPU has no native bf16 (before Ampere); "
                                  f"pick auto or fp16", "precision")
    return name


def torch_dtype(precision: str):
    """torch dtype of the weights for a resolved precision."""
    import torch

    if precision not in DTYPE_NAMES:
        raise ClipFilterError(f"unknown precision {precision!r}; use one of {', '.join(DTYPE_NAMES)}",
                              "precision")
    return getattr(torch, DTYPE_NAMES[precision])


def precision_of(dtype) -> str:
    """"fp32" | "fp16" | "bf16" for a torch dtype (or its name)."""
    text = str(dtype).replace("torch.", "")
    for short, long in DTYPE_NAMES.items():
        if text in (short, long):
            return short
    return text
