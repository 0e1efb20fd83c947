"""A LoRA applied to another base (a Medium LoRA on Large) is named, not left to 'lora key not loaded'."""
from __future__ import annotations

from dtgen.nodes.training.lora_fit import lora_fit, lora_pairs, misfit_message

from .headers import checkpoint, mmdit, train_lora
from dtgen.nodes.training.safetensors_header import Tensor


def _t(spec: dict) -> dict:
    return {k: Tensor(d, tuple(s)) for k, (d, s) in spec.items()}


def test_a_lora_on_its_own_base_fits():
    fit = lora_fit(_t(train_lora(38)), _t(checkpoint(38, "F8_E4M3", scaled=True)))
    assert fit.fits and fit.checked == 38 * 2 * 2 and fit.lora_width == 38 * 64
    assert misfit_message("l", "m", "SD3.5 Large", fit) is None


def test_a_medium_lora_on_large_is_named_with_a_layer_and_both_shapes():
    fit = lora_fit(_t(train_lora(24)), _t(checkpoint(38)))
    assert not fit.fits and len(fit.mismatched) == 24 * 2 * 2 and not fit.missing
    text = misfit_message("medium_lora.safetensors", "sd3.5_large_fp8_scaled.safetensors", "SD3.5 Large", fit)
    assert text.startswith("LoRA medium_lora.safetensors does not fit sd3.5_large_fp8_scaled.safetensors (SD3.5 Large): "
                           "96 of its 96 layers differ in shape (e.g. joint_blocks.0.context_block.attn.qkv: "
                           "LoRA 4608x1536, model 7296x2432)"), text
    assert "width 1536 (depth 24: SD3.5 / SD3 Medium)" in text


def test_a_large_lora_on_medium_names_the_layers_medium_lacks():
    fit = lora_fit(_t(train_lora(38, blocks=range(30, 38))), _t(mmdit(24)))
    assert fit.missing and fit.missing[0].startswith("joint_blocks.30.") and not fit.mismatched
    assert "32 name layers the model lacks (e.g. joint_blocks.30." in misfit_message("l", "m", "b", fit)


def test_kohya_names_map_to_model_layers_and_unknown_forms_count_as_unchecked():
    model = _t(mmdit(2))
    lora = _t({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": ("F16", (4, 128)),
               "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": ("F16", (384, 4)),
               "lora_unet_joint_blocks_0_x_block_attn_qkv.alpha": ("F16", ()),
               "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": ("F16", (4, 128)),
               "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": ("F16", (4, 768))})
    fit = lora_fit(lora, model)
    assert fit.fits and fit.checked == 1 and fit.unchecked == 2
    wrong = _t({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": ("F16", (4, 192)),
                "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": ("F16", (576, 4))})
    assert lora_fit(wrong, model).mismatched == [("joint_blocks.0.x_block.attn.qkv", (576, 192), (384, 128))]


def test_nothing_checkable_says_nothing():
    fit = lora_fit(_t({"transformer.x.lora_A.weight": ("F16", (4, 8))}), _t(mmdit(2)))
    assert fit.checked == 0 and misfit_message("l", "m", "b", fit) is None


def test_lora_pairs_follow_model_links_to_the_file_loader():
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "large.safetensors"}},
        "2": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 3.0}},
        "3": {"class_type": "LoraLoader", "inputs": {"model": ["2", 0], "clip": ["1", 1], "lora_name": "a.safetensors"}},
        "4": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["3", 0], "lora_name": "b.safetensors"}},
        "5": {"class_type": "UNETLoader", "inputs": {"unet_name": "u.safetensors"}},
        "6": {"class_type": "LoraLoader", "inputs": {"model": ["5", 0], "lora_name": ["9", 0]}},   # linked name: unknown
        "7": {"class_type": "LoraLoader", "inputs": {"model": ["7", 0], "lora_name": "loop.safetensors"}},  # a cycle ends
        "8": {"class_type": "DTGenTrainCheckpointLoader", "inputs": {"ckpt_name": "fp8.safetensors"}},
        "9": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["8", 0], "lora_name": "c.safetensors"}},
    }
    assert lora_pairs(prompt) == [("3", "a.safetensors", ("checkpoints", "large.safetensors")),
                                  ("4", "b.safetensors", ("checkpoints", "large.safetensors")),
                                  ("9", "c.safetensors", ("checkpoints", "fp8.safetensors"))]
    assert lora_pairs(None) == []
