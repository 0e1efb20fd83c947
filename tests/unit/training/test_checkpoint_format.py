"""Which checkpoints stock TrainLoraNode can train, told from the header (no weights loaded)."""
from __future__ import annotations

import os

import pytest

from dtgen.nodes.training.checkpoint_format import CheckpointFormatError, checkpoint_format
from dtgen.nodes.training.safetensors_header import MAX_HEADER_BYTES, HeaderError, read_header

from .headers import checkpoint, write_header


def test_the_file_the_templates_name_is_trainable_through_the_view(tmp_path):
    path = write_header(tmp_path / "sd3.5_large_fp8_scaled.safetensors",
                        checkpoint(38, "F8_E4M3", scaled=True, text_encoders=("clip_g", "clip_l", "t5xxl")))
    fmt = checkpoint_format(path)
    assert (fmt.storage, fmt.base, fmt.depth, fmt.needs_view) == ("scaled fp8", "SD3.5 Large", 38, True)
    assert fmt.scaled_layers == 38 * 2 * 5 + 1 and fmt.text_encoders == ("clip_l", "clip_g", "t5xxl")
    assert "dequantizing view (381 scaled layers" in fmt.line() and "VAE inside: yes" in fmt.line()


@pytest.mark.parametrize("dtype, storage", [("BF16", "bf16"), ("F16", "fp16"), ("F32", "fp32"), ("F8_E4M3", "fp8 e4m3")])
def test_plain_and_unscaled_fp8_checkpoints_train_as_stored(tmp_path, dtype, storage):
    fmt = checkpoint_format(write_header(tmp_path / "m.safetensors", checkpoint(24, dtype, text_encoders=())))
    assert fmt.storage == storage and not fmt.needs_view and fmt.scaled_layers == 0
    assert fmt.base == "SD3 Medium" and "text encoders inside: none (wire a TripleCLIPLoader)" in fmt.line()


def test_medium_35_is_told_from_sd3_medium_by_its_second_attention(tmp_path):
    from dtgen.nodes.training.checkpoint_format import classify
    from dtgen.nodes.training.safetensors_header import Tensor

    from .headers import mmdit

    def tensors(spec):
        return {k: Tensor(d, tuple(s)) for k, (d, s) in spec.items()}

    assert classify("m", tensors(mmdit(24, mmdit_x=True))).base == "SD3.5 Medium"
    assert classify("m", tensors(mmdit(2))).base == "MMDiT depth 2"


@pytest.mark.parametrize("tensors, said", [
    ({"text_encoders.clip_l.x.weight": ("F16", (768, 768))}, "holds no diffusion model"),
    ({**checkpoint(2), "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": ("I8", (384, 128))},
     "stores diffusion-model weights as I8 (e.g. model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight)"),
    ({**checkpoint(2), "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight.absmax": ("F32", (12,))},
     "packed quantisation (e.g. model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight.absmax)"),
])
def test_untrainable_files_are_refused_in_one_line_naming_file_and_remedy(tmp_path, tensors, said):
    path = write_header(tmp_path / "odd_model.safetensors", tensors)
    with pytest.raises(CheckpointFormatError) as err:
        checkpoint_format(path)
    text = str(err.value)
    assert text.startswith("odd_model.safetensors: ") and said in text, text
    assert "use sd3.5_large_fp8_scaled.safetensors" in text and "\n" not in text


def test_not_safetensors_is_left_to_the_loader(tmp_path):
    fmt = checkpoint_format(tmp_path / "old.ckpt")
    assert fmt.storage.startswith("unknown") and not fmt.needs_view


@pytest.mark.parametrize("content, said", [
    (b"", "too short"), (b"\x00" * 4, "too short"),
    ((MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b"{}", "header claims"),
    ((20).to_bytes(8, "little") + b"x" * 20, "not JSON"),
    ((2).to_bytes(8, "little") + b"[]", "not a JSON object"),
    ((26).to_bytes(8, "little") + b'{"a": {"dtype": "F32"}}   ', "tensor 'a' has no dtype/shape"),
])
def test_broken_headers_are_named(tmp_path, content, said):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(HeaderError) as err:
        read_header(path)
    assert str(err.value).startswith("broken.safetensors: ") and said in str(err.value), str(err.value)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(HeaderError, match="not a regular file"):
        read_header(fifo)


def test_reads_a_real_safetensors_file_with_fp8(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight": torch.zeros(6, 2).to(torch.float8_e4m3fn),
               "model.diffusion_model.joint_blocks.0.context_block.attn.qkv.scale_weight": torch.ones(()),
               "model.diffusion_model.scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)},
              str(tmp_path / "real.safetensors"), metadata={"x": "y"})
    header = read_header(tmp_path / "real.safetensors")
    assert header["model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight"].dtype == "F8_E4M3"
    assert header["model.diffusion_model.scaled_fp8"].shape == (0,)
    assert checkpoint_format(tmp_path / "real.safetensors").storage == "scaled fp8"
