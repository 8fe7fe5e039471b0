"""The one model loader: QLoRA's 4-bit NF4 base with double quantisation and bf16 compute, or a plain base when the
recipe turns quantisation off; eager attention unless asked otherwise; the NF4 base dequantized for the fast path."""

import pytest
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
from trl import ModelConfig

from paraphrx.modeling import (
    ModelLoadError,
    dequantize_frozen_base,
    device_map,
    load_base_model,
    load_model_and_tokenizer,
)
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
    assert torch.cuda.is_available() or device_map() is None


def test_a_base_that_names_no_attention_gets_eager(tiny_model_dir):
    """What evaluation loads for an adapter without a recipe.yaml: eager applies Gemma-2's soft-capping."""
    model = load_base_model(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32"))
    assert model.config._attn_implementation == "eager" and model.dtype == torch.float32


def test_a_missing_model_is_one_line_naming_it(tmp_path):
    _, training_args, model_args = parse_recipe([TINY, "--model_name_or_path", str(tmp_path / "no-such-model")])
    with pytest.raises(ModelLoadError) as err:
        load_model_and_tokenizer(model_args, training_args)
    assert str(err.value).startswith(f"base model {tmp_path / 'no-such-model'}: ") and "\n" not in str(err.value)
    assert err.value.exit_code == 1


def _nf4(compute_dtype):
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def test_dequantized_base_computes_the_nf4_function(tiny_model_dir):
    nf4 = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, quantization_config=_nf4(torch.float32), dtype=torch.float32
    )
    fast = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, quantization_config=_nf4(torch.float32), dtype=torch.float32
    )
    replaced = dequantize_frozen_base(fast, dtype=torch.float32)
    config = fast.config
    assert replaced == 7 * config.num_hidden_layers
    import bitsandbytes as bnb

    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in fast.modules())
    assert not any(p.requires_grad for n, p in fast.named_parameters() if "proj" in n)
    ids = torch.tensor([[2, 15, 99, 300, 41, 7, 8, 1000]])
    torch.testing.assert_close(fast(ids).logits, nf4(ids).logits, atol=1e-4, rtol=1e-4)
    # The NF4 rounding is kept: the dequantized weights are not the original full-precision ones.
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert not torch.allclose(fast.model.layers[0].mlp.up_proj.weight, full.model.layers[0].mlp.up_proj.weight)


def test_a_base_that_cannot_be_found_without_the_hub_is_named_before_loading(tiny_model_dir, tmp_path, monkeypatch):
    from paraphrx.modeling import ModelLoadError, check_model_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    check_model_source(ModelConfig(model_name_or_path=str(tiny_model_dir)))  # a folder: fine
    for name, expected in (
        (None, "model_name_or_path: no base model given (a folder or a Hub id)"),
        ("models/tiny-gemma3", "model_name_or_path models/tiny-gemma3: no such folder"),
    ):
        with pytest.raises(ModelLoadError) as err:
            check_model_source(ModelConfig(model_name_or_path=name))
        assert str(err.value) == expected and err.value.exit_code == 1
