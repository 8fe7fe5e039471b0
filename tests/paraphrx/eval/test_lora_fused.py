"""The fused pick + expand + add kernel gives the three-step update: every row its own adapter's, the base's rows
untouched. On CUDA, or on the CPU in Triton's interpreter where Triton is installed (CI has neither: skipped)."""

import importlib.util

import pytest
import torch

from paraphrx.eval import lora_fused
from paraphrx.eval.lora_batch import LoraAdapter, apply_lora, lora_groups, stack_lora

HAS_TRITON = importlib.util.find_spec("triton") is not None
CUDA = torch.cuda.is_available() and HAS_TRITON


@pytest.fixture(params=["cuda", "interpreter"])
def device(request, monkeypatch):
    if request.param == "cuda" and not CUDA:
        pytest.skip("needs a CUDA GPU and Triton")
    if request.param == "interpreter":
        if not HAS_TRITON:
            pytest.skip("needs Triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when the kernel is defined
    lora_fused._kernel.cache_clear()
    yield request.param if request.param == "cuda" else "cpu"
    lora_fused._kernel.cache_clear()


def test_available_only_on_cuda():
    assert not lora_fused.available("cpu")
    assert lora_fused.available("cuda") == CUDA


@pytest.mark.parametrize("present_only", [False, True], ids=["all-groups", "present-only"])
@pytest.mark.parametrize("split", [False, True], ids=["float32-a", "three-bf16-parts"])
@pytest.mark.parametrize("round_before_add", [False, True], ids=["add-then-round", "round-then-add"])
@pytest.mark.parametrize("y_dtype", [torch.float32, torch.bfloat16])
def test_fused_update_equals_the_three_steps(device, present_only, split, round_before_add, y_dtype):
    if y_dtype == torch.bfloat16 and device == "cpu":
        pytest.skip("Triton's interpreter truncates bf16")
    torch.manual_seed(0)
    d_in, outs = 48, [200, 72]  # two modules run as one matmul; 200 columns span two column blocks
    modules = ["m.one", "m.two"]

    def adapter(name, rank, scaling, which):
        return LoraAdapter(
            name, None, rank, scaling, {m: (torch.randn(rank, d_in), torch.randn(o, rank)) for m, o in which}
        )

    # ranks 4 and 8: the kernel pads r = 8 to its 16-wide tile; the third adapter leaves module one alone
    adapters = [
        adapter("a1", 4, 0.5, zip(modules, outs)),
        adapter("a2", 8, 2.0, zip(modules, outs)),
        adapter("a3", 8, 1.5, [(modules[1], outs[1])]),
    ]
    lora = stack_lora(adapters, modules, d_in, outs, torch.float32, device, split=split)
    rows = [0, 1, 3, 3, 2, 1, 0, 3, 3, 3, 1, 2] * 3  # 36 rows: the base's, and groups of 9, 6 and 15
    if present_only:
        rows = [r if r != 2 else 3 for r in rows]  # adapter a2 absent: two groups
    groups = lora_groups(rows, len(adapters), None if present_only else 24, present_only=present_only).to(device)
    x = torch.randn(len(rows), d_in, device=device)
    x = x.bfloat16() if split else x
    y = torch.randn(len(rows), sum(outs), device=device).to(y_dtype)

    three_steps = apply_lora(y.clone(), x, lora, groups, round_before_add)
    fused = apply_lora(y.clone(), x, lora, groups, round_before_add, expand_add=lora_fused.expand_add)

    base = torch.tensor(rows, device=device) == 0
    assert torch.equal(fused[base], y[base])  # the base's rows, and places that do not own a row, write nothing
    assert not torch.equal(fused[~base], y[~base])
    if y_dtype == torch.float32:
        torch.testing.assert_close(fused, three_steps, rtol=1e-5, atol=1e-5 * three_steps.abs().max().item())
    else:  # the r-term sums' order may differ: at most one bf16 step apart, and rarely
        step = torch.finfo(torch.bfloat16).eps * three_steps.float().abs().clamp(min=1e-30)
        assert bool(((fused.float() - three_steps.float()).abs() <= step).all())
        assert (fused == three_steps).float().mean().item() > 0.99
