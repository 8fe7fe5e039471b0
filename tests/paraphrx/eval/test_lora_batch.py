"""Batched multi-adapter LoRA: each row gets exactly its own adapter's update; what the formula lacks is refused."""

import pytest
import torch

from paraphrx.eval.lora_batch import (
    LoraAdapter,
    UnsupportedAdapter,
    adapter_masks,
    apply_lora,
    read_lora_adapter,
    stack_lora,
)
from tests.conftest import make_adapter

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny_module_names(num_layers=2):
    return {
        f"model.layers.{i}.{group}.{p}"
        for i in range(num_layers)
        for group, projs in (("self_attn", ALL_PROJECTIONS[:4]), ("mlp", ALL_PROJECTIONS[4:]))
        for p in projs
    }


@pytest.mark.parametrize("y_dtype", [torch.float64, torch.float32], ids=["addmm", "separate-precision"])
def test_each_row_gets_its_own_adapters_update_on_a_fused_projection(y_dtype):
    torch.manual_seed(0)
    d_in, outs = 6, [5, 3]  # a fused projection: two modules run as one matmul
    modules = ["m.one", "m.two"]
    a1 = LoraAdapter("a1", None, 2, 0.5, {m: (torch.randn(2, d_in), torch.randn(o, 2)) for m, o in zip(modules, outs)})
    a2 = LoraAdapter("a2", None, 3, 2.0, {"m.two": (torch.randn(3, d_in), torch.randn(3, 3))})  # second module only
    lora = stack_lora([a1, a2], modules, d_in, outs, torch.float64, "cpu")
    assert lora.a.shape == (2 * 5, d_in) and [b.shape for b in lora.b] == [(5, 5), (3, 5)]  # no zero blocks of B
    masks = adapter_masks([a1, a2], torch.float64, "cpu")
    x = torch.randn(4, d_in, dtype=torch.float64)
    y = torch.randn(4, sum(outs), dtype=y_dtype)
    row_models = torch.tensor([0, 1, 2, 1])  # base, a1, a2, a1
    out = apply_lora(y.clone(), x, lora, masks[row_models])

    def expected(adapter, row):
        parts = []
        for module, width in zip(modules, outs):
            if adapter is None or module not in adapter.tensors:
                parts.append(torch.zeros(width, dtype=torch.float64))
            else:
                a, b = (t.double() for t in adapter.tensors[module])
                parts.append(adapter.scaling * (b @ (a @ x[row])))
        return (y[row].double() + torch.cat(parts)).to(y_dtype)

    for row, adapter in enumerate([None, a1, a2, a1]):
        torch.testing.assert_close(out[row], expected(adapter, row))
    assert torch.equal(out[0], y[0])  # the base row is untouched
    assert stack_lora([a2], ["m.one"], d_in, [5], torch.float64, "cpu") is None  # no adapter touches it: no work


def test_exact_update_rounds_like_peft_layers():
    """bf16 base output: bitsandbytes layers round the fp32 update before the add, plain layers round the sum."""
    torch.manual_seed(0)
    a = LoraAdapter("a", None, 4, 2.0, {"m": (torch.randn(4, 16), torch.randn(8, 4) * 1e-3)})
    lora = stack_lora([a], ["m"], 16, [8], torch.float32, "cpu")
    x, y = torch.randn(64, 16).bfloat16(), torch.randn(64, 8).bfloat16()
    update = (x.float() @ a.tensors["m"][0].T @ a.tensors["m"][1].T) * 2.0
    mask = torch.full((64, 4), 2.0)
    plain, four_bit = (apply_lora(y, x, lora, mask, round_before_add=r) for r in (False, True))
    torch.testing.assert_close(plain, (y + update).bfloat16(), rtol=0, atol=1e-2)  # scale before B: fp32 rounding
    torch.testing.assert_close(four_bit, y + update.bfloat16(), rtol=0, atol=1e-2)
    assert (plain == (y + update).bfloat16()).float().mean() > 0.99 and (four_bit == y + update.bfloat16()).all()
    assert not torch.equal(plain, four_bit)  # the two roundings really differ somewhere


def test_scaling_follows_peft_with_and_without_rslora(tiny_model_dir, tmp_path):
    plain = read_lora_adapter("p", make_adapter(tiny_model_dir, tmp_path / "p", 1, r=4), tiny_module_names())
    rs = read_lora_adapter(
        "r", make_adapter(tiny_model_dir, tmp_path / "r", 1, r=4, use_rslora=True), tiny_module_names()
    )
    module = "model.layers.0.self_attn.q_proj"
    raw = _raw_b(tmp_path / "p", module)
    torch.testing.assert_close(plain.tensors[module][1], raw)
    assert (plain.scaling, rs.scaling) == (8 / 4, 8 / 2)  # lora_alpha / r, lora_alpha / sqrt(r)
    assert set(plain.tensors) == {
        f"model.layers.{i}.{g}" for i in range(2) for g in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
    }


def _raw_b(folder, module):
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")[f"base_model.model.{module}.lora_B.weight"]


REFUSED = {
    "dora": (dict(use_dora=True), "field 'use_dora' = True"),
    "lora bias": (dict(lora_bias=True), "field 'lora_bias' = True"),
    "bias": (dict(bias="lora_only"), "field 'bias' = 'lora_only'"),
    "modules_to_save": (dict(modules_to_save=["lm_head"]), "field 'modules_to_save'"),
    "rank pattern": (dict(rank_pattern={"q_proj": 2}), "field 'rank_pattern'"),
    "embedding adapter": (dict(targets=("q_proj", "embed_tokens")), "model.embed_tokens."),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_refuses_what_the_batched_formula_does_not_compute(tiny_model_dir, tmp_path, case):
    kwargs, message = REFUSED[case]
    folder = make_adapter(tiny_model_dir, tmp_path / "ad", 0, **kwargs)
    with pytest.raises(UnsupportedAdapter, match="ad") as info:
        read_lora_adapter("ad", folder, tiny_module_names())
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_tensor_outside_the_projections_is_refused_by_name(tiny_model_dir, tmp_path):
    folder = make_adapter(tiny_model_dir, tmp_path / "ad", 0)  # layers 0 and 1; the engine serves layer 0 only
    with pytest.raises(UnsupportedAdapter, match=r"tensor .base_model\.model\.model\.layers\.1\."):
        read_lora_adapter("ad", folder, tiny_module_names(num_layers=1))
