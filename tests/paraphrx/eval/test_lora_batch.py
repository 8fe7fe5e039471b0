"""Batched multi-adapter LoRA: each row gets exactly its own adapter's update; what the formula lacks is refused."""

import pytest
import torch

from paraphrx.eval.lora_batch import (
    LoraAdapter,
    UnsupportedAdapter,
    apply_lora,
    capacity_for,
    lora_groups,
    mm_float32,
    read_lora_adapter,
    split_bf16,
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


@pytest.mark.parametrize("y_dtype", [torch.float64, torch.float32], ids=["same-dtype", "separate-precision"])
@pytest.mark.parametrize("capacity", [None, 5])
def test_each_row_gets_its_own_adapters_update_on_a_fused_projection(y_dtype, capacity):
    torch.manual_seed(0)
    d_in, outs = 6, [5, 3]  # a fused projection: two modules run as one matmul
    modules = ["m.one", "m.two"]
    a1 = LoraAdapter("a1", None, 2, 0.5, {m: (torch.randn(2, d_in), torch.randn(o, 2)) for m, o in zip(modules, outs)})
    a2 = LoraAdapter("a2", None, 3, 2.0, {"m.two": (torch.randn(3, d_in), torch.randn(3, 3))})  # second module only
    lora = stack_lora([a1, a2], modules, d_in, outs, torch.float64, "cpu")
    assert lora.a.shape == (2 * 2 * 3, d_in) and [b.shape for b in lora.b] == [(2, 3, 5), (2, 3, 3)]  # rank 2 padded
    x = torch.randn(5, d_in, dtype=torch.float64)
    y = torch.randn(5, sum(outs), dtype=y_dtype)
    row_models = [0, 1, 2, 1, 0]  # base, a1, a2, a1, base
    groups = lora_groups(row_models, 2, capacity)
    assert groups.pick.shape == (2, capacity or 2) and groups.back.tolist()[0] == groups.back.tolist()[4] == 2 * (
        capacity or 2
    )  # the base's rows read the zero row
    out = apply_lora(y.clone(), x, lora, groups)

    def expected(adapter, row):
        parts = []
        for module, width in zip(modules, outs):
            if adapter is None or module not in adapter.tensors:
                parts.append(torch.zeros(width, dtype=torch.float64))
            else:
                a, b = (t.double() for t in adapter.tensors[module])
                parts.append(adapter.scaling * (b @ (a @ x[row])))
        return (y[row].double() + torch.cat(parts)).to(y_dtype)

    for row, adapter in enumerate([None, a1, a2, a1, None]):
        torch.testing.assert_close(out[row], expected(adapter, row))
    assert torch.equal(out[0], y[0]) and torch.equal(out[4], y[4])  # the base rows are untouched
    # one group per adapter present (a prefill): the same values
    present = lora_groups([0, 2, 0], 2, present_only=True)
    assert present.adapters.tolist() == [1] and present.pick.tolist() == [[1 * 2 + 1]]  # row 1, adapter 1 of 2
    torch.testing.assert_close(apply_lora(y[[0, 2, 4]], x[[0, 2, 4]], lora, present)[1], expected(a2, 2))
    assert torch.equal(apply_lora(y[:2], x[:2], lora, lora_groups([0, 0], 2, present_only=True)), y[:2])
    assert stack_lora([a2], ["m.one"], d_in, [5], torch.float64, "cpu") is None  # no adapter touches it: no work


def test_groups_cover_each_row_once_with_repeats_and_capacity():
    """A prefill's entries cover `repeat` rows each (a prompt's tokens); every adapter row appears once in its
    group, as its block of the shrink (row * n + adapter), and `back` finds it there."""
    models = [2, 0, 1, 2]
    groups = lora_groups(models, 3, capacity=8, repeat=3)
    assert groups.pick.shape == (3, 8) and groups.back.shape == (12,)
    flat = groups.pick.flatten()
    for row in range(12):
        model = models[row // 3]
        if model == 0:
            assert groups.back[row] == 3 * 8
        else:
            assert flat[groups.back[row]] == row * 3 + model - 1 and groups.back[row] // 8 == model - 1
    assert sorted(flat[groups.back[groups.back < 24]].tolist()) == sorted(
        row * 3 + models[row // 3] - 1 for row in range(12) if models[row // 3]
    )
    assert (flat % 3 == torch.arange(3).repeat_interleave(8)).all()  # unused places: still their adapter's block
    with pytest.raises(ValueError, match="capacity 4"):
        lora_groups(models, 3, capacity=4, repeat=3)


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))],
)
def test_split_shrink_is_the_float32_product(device):
    """A float32 A as three bf16 parts: their sum is A to float32 precision, and a bf16 x times the parts (float32
    accumulation: on CUDA, cuBLAS's bf16 tensor-core GEMM with a float32 output) is x A^T to float32 precision (on
    the tensor cores within 2^-16), where one bf16 A would be off in the third digit."""
    torch.manual_seed(0)
    a = (torch.randn(48, 2304) / 48).to(device)
    parts = split_bf16(a)
    assert parts.dtype == torch.bfloat16 and parts.shape == (3, 48, 2304)
    assert (parts.double().sum(0) - a.double()).abs().max() <= a.abs().max() * 2**-24
    x = torch.randn(64, 2304, device=device).bfloat16()
    exact = x.double() @ a.double().t()
    split = sum(mm_float32(x, p) for p in parts)
    float32 = x.float() @ a.t()
    assert split.dtype == torch.float32
    error, float32_error = ((t.double() - exact).abs().max() for t in (split, float32))
    if device == "cpu":  # the same products, added in float32 in another order
        assert error <= 4 * float32_error + 1e-7
    else:  # Hopper's tensor cores add in float32 but truncate: ~10x a float32 GEMM's error, 2^-16 at most
        assert error <= 2**-16 * exact.abs().max()
    assert (mm_float32(x, parts[0]).double() - exact).abs().max() > 100 * error


@pytest.mark.parametrize("split", [False, True], ids=["float32", "split-bf16"])
def test_split_update_equals_the_float32_update(split):
    torch.manual_seed(0)
    adapters = [
        LoraAdapter(f"a{i}", None, 4, 2.0, {"m": (torch.randn(4, 32), torch.randn(16, 4) * 1e-2)}) for i in (1, 2)
    ]
    x, y = torch.randn(24, 32).bfloat16(), torch.randn(24, 16).bfloat16()
    groups = lora_groups([i % 3 for i in range(24)], 2)
    reference = apply_lora(y, x, stack_lora(adapters, ["m"], 32, [16], torch.float64, "cpu"), groups)
    ours = apply_lora(y, x, stack_lora(adapters, ["m"], 32, [16], torch.float32, "cpu", split=split), groups)
    assert (ours == reference).float().mean() > 0.99
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-2)


def test_capacities_are_few_sizes_that_hold_the_group():
    sizes = [capacity_for(need, 512) for need in range(0, 513)]
    assert sorted(set(sizes)) == [8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
    assert all(size >= need for need, size in enumerate(sizes))
    assert capacity_for(86, 512) == 96 and capacity_for(7, 6) == 6  # at most the width


def test_exact_update_rounds_like_peft_layers():
    """bf16 base output: bitsandbytes layers round the fp32 update before the add, plain layers round the sum."""
    torch.manual_seed(0)
    a = LoraAdapter("a", None, 4, 2.0, {"m": (torch.randn(4, 16), torch.randn(8, 4) * 1e-3)})
    lora = stack_lora([a], ["m"], 16, [8], torch.float32, "cpu")
    x, y = torch.randn(64, 16).bfloat16(), torch.randn(64, 8).bfloat16()
    update = (x.float() @ a.tensors["m"][0].T @ a.tensors["m"][1].T) * 2.0
    groups = lora_groups([1] * 64, 1)
    plain, four_bit = (apply_lora(y, x, lora, groups, round_before_add=r) for r in (False, True))
    torch.testing.assert_close(plain, (y + update).bfloat16(), rtol=0, atol=1e-2)  # scale before B: fp32 rounding
    torch.testing.assert_close(four_bit, y + update.bfloat16(), rtol=0, atol=1e-2)
    assert (plain == (y + update).bfloat16()).float().mean() > 0.99 and (four_bit == y + update.bfloat16()).all()
    assert not torch.equal(plain, four_bit)  # the two roundings really differ somewhere
    # in bf16 (training's autocast arithmetic): the update rounded to bf16, then added
    fused = apply_lora(y, x, stack_lora([a], ["m"], 16, [8], torch.bfloat16, "cpu"), groups)
    torch.testing.assert_close(fused, four_bit, rtol=0, atol=3e-2)


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
