"""The per-row LoRA kernels against lora_batch's masked float32 update: on CUDA, or on the CPU under Triton's
interpreter (TRITON_INTERPRET=1; its bf16 casts truncate, so bf16 is checked on CUDA only)."""

import os

import pytest
import torch

from paraphrx.eval.lora_batch import LoraAdapter, adapter_masks, apply_lora, pad_lora, stack_lora

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs a CUDA GPU or TRITON_INTERPRET=1", allow_module_level=True)

from paraphrx.eval import lora_kernels  # noqa: E402

MODULES, IN, OUTS = ("q", "k", "v"), 200, (96, 64, 64)


def adapters() -> list[LoraAdapter]:
    """Ranks 4, 8 and 20 (padded to 16 and 32), one adapter leaving a module alone, rsLoRA-like scales."""
    torch.manual_seed(0)
    made = []
    for i, rank in enumerate((4, 8, 20)):
        tensors = {
            m: (torch.randn(rank, IN) / IN**0.5, torch.randn(out, rank) / rank**0.5)
            for m, out in zip(MODULES, OUTS)
            if (i, m) != (1, "k")
        }
        made.append(LoraAdapter(f"a{i}", None, rank, 2.0 / rank**0.5, tensors))
    return made


@pytest.mark.parametrize("round_before_add", [False, True], ids=["plain", "4-bit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_each_row_gets_its_own_adapters_update(dtype, round_before_add):
    if dtype == torch.bfloat16 and DEVICE == "cpu":
        pytest.skip("Triton's interpreter truncates bf16 casts")
    made, n = adapters(), 300  # rows of the base and of three adapters, interleaved
    model = torch.randint(0, len(made) + 1, (n,), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    x = torch.randn(n, IN, device=DEVICE).to(dtype)
    y = torch.randn(n, sum(OUTS), device=DEVICE).to(dtype)
    masks = adapter_masks(made, torch.float32, DEVICE)
    expected = apply_lora(y.clone(), x, stack_lora(made, list(MODULES), IN, list(OUTS), torch.float32, DEVICE),
                          masks[model], round_before_add)  # fmt: skip
    padded = pad_lora(made, list(MODULES), IN, list(OUTS), DEVICE)
    assert padded.rank == 32 and padded.a.shape == (3, 3 * 32, IN)
    order = lora_kernels.row_order(model - 1)
    ours = lora_kernels.expand(y.clone(), lora_kernels.shrink(x, padded, order), padded, order, round_before_add)
    assert torch.equal(ours[model == 0], y[model == 0])  # base rows: untouched
    if dtype == torch.float32:  # the float32 sums in another order
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    else:  # rounded to bf16: a different float32 sum order moves a value across a rounding boundary only rarely
        assert (ours == expected).float().mean() > 0.999
    assert (ours - y).abs().amax(dim=1)[model != 0].min() > 0  # every adapter row changed


def test_the_engine_with_per_row_kernels_gives_the_masked_engines_text(tiny_model_dir, tmp_path):
    """float32 on the tiny Gemma-2: the base and three adapters (ranks 4, 8, 2 on different projections) mixed in one
    batch, refills and a compaction."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from paraphrx.eval.engine import BASE, GemmaDecodeEngine, generate_texts
    from tests.conftest import make_adapter
    from tests.paraphrx.eval.test_engine import ALL_PROJECTIONS
    from tests.paraphrx.eval.test_generation import PROMPTS

    folders = {
        "a1": make_adapter(tiny_model_dir, tmp_path / "a1", 1, ALL_PROJECTIONS, r=4),
        "a2": make_adapter(tiny_model_dir, tmp_path / "a2", 2, ALL_PROJECTIONS, r=8, use_rslora=True),
        "a3": make_adapter(tiny_model_dir, tmp_path / "a3", 3, ("q_proj", "v_proj", "down_proj"), r=2),
    }
    jobs = {BASE: PROMPTS, "a1": PROMPTS[::-1], "a2": PROMPTS[1:5], "a3": PROMPTS[2:4]}

    def engine(kernels: bool) -> GemmaDecodeEngine:
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
        options = dict(max_slots=12, chunk_steps=8, lora_kernels=kernels, compile_kernels=False, cuda_graphs=False)
        return GemmaDecodeEngine(model.to(DEVICE).eval(), folders, **options)

    ours = engine(True)
    assert ours.lora_kernels
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert generate_texts(ours, tokenizer, jobs, 24) == generate_texts(engine(False), tokenizer, jobs, 24)
    assert ours.stats["compactions"] >= 1
