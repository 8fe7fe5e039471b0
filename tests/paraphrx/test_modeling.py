"""Model construction from a recipe: QLoRA's 4-bit NF4 base with double quantisation and bf16 compute, or a plain
base when the recipe turns quantisation off."""

from pathlib import Path

import torch

from paraphrx.modeling import kbit_device_map, load_model_and_tokenizer
from paraphrx.recipe_cli import parse_recipe
from tests.conftest import tiny_recipe

TINY = tiny_recipe()


def test_recipe_builds_an_nf4_double_quant_base_with_bf16_compute(tiny_model_dir, tmp_path):
    import bitsandbytes as bnb

    _, training_args, model_args = parse_recipe([TINY, "--model_name_or_path", str(tiny_model_dir)])
    model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    q = model.config.quantization_config
    assert (q.load_in_4bit, q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert q.bnb_4bit_compute_dtype == torch.bfloat16  # not TRL's float32 default
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14 and all(m.weight.compress_statistics for m in layers)
    assert model.config._attn_implementation == "eager"
    assert tokenizer.bos_token == "<bos>" and tokenizer.eos_token == "<eos>"


def test_quantisation_off_gives_a_plain_model_in_the_recipe_dtype(tiny_model_dir):
    _, training_args, model_args = parse_recipe(
        [TINY, "--model_name_or_path", str(tiny_model_dir), "--load_in_4bit", "false", "--dtype", "float32"]
    )
    model, _ = load_model_and_tokenizer(model_args, training_args)
    assert getattr(model.config, "quantization_config", None) is None
    assert model.dtype == torch.float32 and type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear


def test_cpu_needs_no_device_map():
    assert torch.cuda.is_available() or kbit_device_map() is None
