"""The fast path computes the reference's function: same weights, same per-token loss, no attention across samples.

CPU tests run in CI; the CUDA test (flex attention + compiled layers + dequantized NF4, packed) runs on a GPU box:
`python -m pytest tests/paraphrx/test_fast_path.py`.
"""

import os
from contextlib import ExitStack

import pytest
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Gemma2Config, Gemma2ForCausalLM
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from paraphrx.completion_positions import POSITIONS, TARGETS, LabelPositionsCollator, position_lm_head
from paraphrx.fast_path import change_arguments, compiled_decoder_layers, packed_masks_without_host_read
from paraphrx.modeling import dequantize_frozen_base

PAD = 0


def _nf4(compute_dtype):
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def _examples(lengths, prompt_lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n, p in zip(lengths, prompt_lengths):
        ids = [2] + torch.randint(10, vocab, (n - 1,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * p + ids[p:]})
    return rows


def _unpacked_token_losses(model, rows):
    """Reference: right-padded batch with an attention mask; per-token CE of every trained position, in order."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], mask[i, :n], labels[i, :n] = torch.tensor(r["input_ids"]), 1, torch.tensor(r["labels"])
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
    shift_labels = labels[:, 1:].to(device)
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), shift_labels, reduction="none", ignore_index=-100
    )
    return losses[shift_labels != -100]


def _packed_token_losses(model, rows, leak=False):
    """Padding-free batch exactly as SFTTrainer collates it (one row, position_ids restart per sample)."""
    batch = DataCollatorForLanguageModeling(pad_token_id=PAD, padding_free=True)(rows)
    position_ids = batch["position_ids"]
    if leak:  # control: one long sequence, so every sample attends to the ones before it
        position_ids = torch.arange(position_ids.shape[1])[None]
    device = next(model.parameters()).device
    # use_cache=False as SFTTrainer passes it: with a KV cache, transformers does not look for packed sequences.
    logits = model(
        input_ids=batch["input_ids"].to(device), position_ids=position_ids.to(device), use_cache=False
    ).logits.float()
    shift_labels = batch["labels"][:, 1:].to(device)
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), shift_labels, reduction="none", ignore_index=-100
    )
    return losses[shift_labels != -100]


def test_packed_batch_matches_unpacked_reference_on_cpu(tiny_model_dir):
    """The CPU fallback (eager) with TRL's padding-free batches: same per-token loss, and samples stay separate."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rows = _examples([23, 40, 11, 31], [9, 12, 4, 20], model.config.vocab_size)
    with torch.no_grad():
        reference = _unpacked_token_losses(model, rows)
        packed = _packed_token_losses(model, rows)
        leaked = _packed_token_losses(model, rows, leak=True)
    assert packed.shape == reference.shape == (sum(n - p for n, p in [(23, 9), (40, 12), (11, 4), (31, 20)]),)
    torch.testing.assert_close(packed, reference, atol=1e-4, rtol=1e-4)
    assert (leaked - reference).abs().max() > 1e-2  # the control shows the comparison can fail


# ------------------------------------------------------------------------------------------------------ GPU


def _gpu_model_dir(tmp_path, sliding_window=128):
    """A small Gemma-2 with gemma-2-2b's head_dim (256) and soft-capping, scaled so that both caps really bite."""
    config = Gemma2Config(
        vocab_size=4096,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=sliding_window,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        pad_token_id=PAD,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:  # attention scores of order 10-50: soft-capping at 50 changes them
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
        model.model.embed_tokens.weight.mul_(4)
    model.save_pretrained(tmp_path / "gpu-gemma2")
    return tmp_path / "gpu-gemma2"


def _with_lora(model, seed=1):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # non-zero B, so the adapters take part in the comparison
                p.normal_(0, 0.02)
    return peft_model


def _set_attention_softcap(model, value):
    for module in model.modules():
        if hasattr(module, "attn_logit_softcapping"):  # read per call by Gemma-2's attention, not from the config
            module.attn_logit_softcapping = value


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex attention backward and torch.compile need CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_path_matches_eager_unpacked_reference_on_gpu(tmp_path, dtype, request):
    """float32: the fast path computes the reference's function (loss and LoRA gradients to ~1e-4); bfloat16: the
    per-token loss the trainer sees agrees within bf16 rounding."""
    from trl.trainer.utils import add_fused_lm_head

    model_dir = _gpu_model_dir(tmp_path)
    load = dict(quantization_config=_nf4(dtype), dtype=dtype, device_map={"": 0})
    reference = _with_lora(AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", **load))
    base = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="flex_attention", **load)
    assert dequantize_frozen_base(base, dtype=dtype) == 28
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))  # what SFTTrainer does
    undo = ExitStack()  # the fast path's changes, as build_trainer applies them; undone after the test
    request.addfinalizer(undo.close)
    assert undo.enter_context(position_lm_head(base))  # the trained positions come from the collator
    fast = _with_lora(base)
    lora = {n: p for n, p in reference.named_parameters() if "lora_" in n}
    with torch.no_grad():  # identical adapters on both sides
        for n, p in fast.named_parameters():
            if "lora_" in n:
                p.copy_(lora[n])
    undo.enter_context(compiled_decoder_layers(fast))
    undo.enter_context(packed_masks_without_host_read())

    rows = _examples([37, 120, 64, 201, 90], [12, 40, 30, 45, 89], 4096)
    batch = LabelPositionsCollator(DataCollatorForLanguageModeling(pad_token_id=PAD, padding_free=True))(rows)
    batch = {
        k: v.cuda() for k, v in batch.items() if k in ("input_ids", "position_ids", "label_positions", "label_targets")
    }
    reference.train(), fast.train()
    expected = _unpacked_token_losses(reference, rows)
    got = -fast(**batch, use_cache=False, fused_lm_head=True).log_probs.float()  # one per trained token, in order
    expected.mean().backward()
    got.mean().backward()
    with torch.no_grad():
        # Controls: what a leaky pack, or a reference without attention soft-capping, would look like.
        leaky = {**batch, "position_ids": torch.arange(batch["input_ids"].shape[1], device="cuda")[None]}
        leaked = -fast(**leaky, use_cache=False, fused_lm_head=True).log_probs.float()
        _set_attention_softcap(reference, None)
        uncapped = _unpacked_token_losses(reference, rows)

    assert got.shape == expected.shape
    err = (got - expected.detach()).abs()
    scale = expected.detach().abs().mean()
    tolerance = 1e-3 if dtype == torch.float32 else 1e-2  # fp32: flex may use TF32 matmuls
    print(
        f"{dtype}: mean err {err.mean() / scale:.2e}, max err {err.max() / scale:.2e} (relative to mean loss "
        f"{scale:.3f}); leak {(leaked - expected).abs().mean():.3e}; no softcap {(uncapped - expected).abs().mean():.3e}"
    )
    assert err.mean() / scale < tolerance and err.max() / scale < 10 * tolerance
    if dtype == torch.float32:
        # bf16 rounding in this deliberately peaked model is of the same order as the controls' effects, so the
        # controls (and the near-one-hot attention gradients) are checked where they are unambiguous: in float32.
        assert (leaked - expected).abs().mean() > 1000 * err.mean()
        assert (uncapped - expected).abs().mean() > 1000 * err.mean()
        ref_grads = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
        fast_grads = {n: p.grad for n, p in fast.named_parameters() if p.grad is not None}
        assert ref_grads.keys() == fast_grads.keys() and len(ref_grads) == 2 * 7 * 4
        worst = max(((fast_grads[n] - g).norm() / g.norm()).item() for n, g in ref_grads.items())
        print(f"worst LoRA gradient relative error {worst:.2e}")
        assert worst < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex attention backward and torch.compile need CUDA")
def test_packed_evaluation_matches_the_reference_and_nothing_recompiles_on_gpu(tmp_path, fresh_dynamo):
    """bf16, as the recipes train: rows within the sliding window (256), so one mask serves every layer. Three training
    steps at three packed lengths compile once; evaluation compiles once more (no_grad) and then never again, at any
    token budget; its token-weighted loss is the eager unpacked reference's, whatever the budget."""
    from datasets import Dataset
    from trl.trainer.utils import add_fused_lm_head

    from paraphrx.fast_path import block_masks_compiled_once, one_mask_for_every_layer
    from paraphrx.packed_evaluation import PackedEvalBatches, token_sums

    model_dir, dtype = _gpu_model_dir(tmp_path, sliding_window=256), torch.bfloat16
    load = dict(quantization_config=_nf4(dtype), dtype=dtype, device_map={"": 0})
    reference = _with_lora(AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", **load))
    base = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="flex_attention", **load)
    dequantize_frozen_base(base, dtype=dtype)
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))
    with ExitStack() as undo:
        assert undo.enter_context(position_lm_head(base))
        fast = _with_lora(base)
        lora = {n: p for n, p in reference.named_parameters() if "lora_" in n}
        with torch.no_grad():
            for n, p in fast.named_parameters():
                if "lora_" in n:
                    p.copy_(lora[n])
        undo.enter_context(compiled_decoder_layers(fast))
        assert undo.enter_context(one_mask_for_every_layer(fast, max_length=256))
        undo.enter_context(block_masks_compiled_once())
        undo.enter_context(packed_masks_without_host_read())
        collator = LabelPositionsCollator(DataCollatorForLanguageModeling(pad_token_id=PAD, padding_free=True))

        fast.train()
        start, frames = _frames(), []
        for seed, lengths in enumerate(([37, 120, 64], [201, 90, 15, 77], [256, 33])):
            rows = _examples(lengths, [n // 3 for n in lengths], 4096, seed=seed)
            keys = ("input_ids", "position_ids", POSITIONS, TARGETS)
            batch = {k: v.cuda() for k, v in collator(rows).items() if k in keys}
            (-fast(**batch, use_cache=False, fused_lm_head=True).log_probs.float().mean()).backward()
            torch.cuda.synchronize()
            frames.append(_frames() - start)
        rows = _examples([37, 120, 64, 201, 90, 15, 77, 256, 33, 140], [12, 40, 30, 45, 89, 5, 20, 100, 10, 50], 4096)
        fast.eval(), reference.eval()
        sums = {}
        for budget in (300, 700, 5000):
            batches = PackedEvalBatches(Dataset.from_list(rows), collator, tokens_per_batch=budget)
            sums[budget] = token_sums(fast, batches, torch.device("cuda")).tolist()
            frames.append(_frames() - start)
        with torch.no_grad():
            expected = _unpacked_token_losses(reference, rows).double()
    print(
        f"compiled frames after each step and evaluation: {frames}; eval loss by budget "
        f"{ {b: s[0] / s[3] for b, s in sums.items()} } vs reference {expected.mean():.5f}"
    )
    assert frames[0] >= 1 and frames[:3] == [frames[0]] * 3, "no recompilation after the first step"
    assert frames[3] > frames[2] and frames[3:] == [frames[3]] * 3, "evaluation compiles once, at any budget"
    for nll, _, _, tokens in sums.values():
        assert tokens == expected.numel()
        assert abs(nll / tokens - expected.mean().item()) / expected.mean().item() < 1e-2  # bf16
    losses = [s[0] / s[3] for s in sums.values()]
    assert max(losses) - min(losses) < 2e-3 * losses[0]  # the budget changes only bf16 rounding


# ------------------------------------------------------------------------------------------------------ CPU: apply/undo


def test_argument_changes_keep_the_examples_per_step_and_are_undone(monkeypatch):
    from paraphrx.config import ParaphrxSFTConfig

    args = ParaphrxSFTConfig(
        output_dir="/tmp/unused",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=4,
        gradient_checkpointing=True,
        max_length=512,
        report_to="none",
        use_cpu=True,
        bf16=False,
    )
    before = dict(vars(args)), dict(vars(args.accelerator_config))
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    with ExitStack() as undo:
        recipe_args = change_arguments(args, undo)
        assert recipe_args.max_length == 512  # what the rows are cut to after the trainer is built
        assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (16, 1)
        assert args.padding_free and args.max_length is None and not args.use_liger_kernel
        assert not getattr(args, "activation_checkpointing", False) and not args.gradient_checkpointing
        # nothing left that makes the host wait for the GPU each step
        assert args.optim == "adamw_torch_fused" and not args.logging_nan_inf_filter
        assert args.dataloader_pin_memory and args.accelerator_config.non_blocking
        assert args.dataloader_num_workers == 1 and args.dataloader_persistent_workers  # collation beside the step
        assert args.dataset_num_proc == 16  # SFTTrainer tokenizes on 16 of the 64 cores (TOKENIZE_PROCESSES)
    assert (dict(vars(args)), dict(vars(args.accelerator_config))) == before  # every argument as the recipe set it
    args.dataloader_num_workers, args.dataset_num_proc = 4, 3
    with ExitStack() as undo:
        change_arguments(args, undo)
        assert args.dataloader_num_workers == 4 and args.dataset_num_proc == 3  # a recipe's own settings stay
    args.dataset_num_proc = None
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with ExitStack() as undo:
        change_arguments(args, undo)
        assert args.dataset_num_proc is None  # two cores: one process, as CI runs


def test_packed_masks_without_the_host_check_give_the_same_model_output(tiny_model_dir):
    from transformers import masking_utils

    original = masking_utils.find_packed_sequence_indices
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    packed = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    single = torch.arange(9)[None]
    ids = torch.randint(10, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(0))
    before = {
        name: model(input_ids=ids, position_ids=pos, use_cache=False).logits
        for name, pos in (("packed", packed), ("single", single))
    }
    assert original(single) is None  # transformers' host check: one sequence, no per-sample mask

    with packed_masks_without_host_read():
        patched = masking_utils.find_packed_sequence_indices
        assert patched is not original
        assert torch.equal(patched(packed), original(packed)) and torch.equal(patched(single), torch.zeros_like(single))
        for name, pos in (("packed", packed), ("single", single)):
            after = model(input_ids=ids, position_ids=pos, use_cache=False).logits
            torch.testing.assert_close(after, before[name], rtol=0, atol=1e-6)
    assert masking_utils.find_packed_sequence_indices is original  # undone: process-wide, so it must be
    # control: the packed mask matters, so the comparison above could fail
    assert (before["packed"] - before["single"]).abs().max() > 1e-3


def test_truncate_tokenized_cuts_like_trl_keep_start():
    from datasets import Dataset

    from paraphrx.fast_path import truncate_tokenized

    ds = Dataset.from_list(
        [
            {"input_ids": [2, 5, 6, 7, 8], "completion_mask": [0, 0, 1, 1, 1]},
            {"input_ids": [2, 9], "completion_mask": [0, 1]},
        ]
    )
    cut = truncate_tokenized(ds, 3)
    assert cut["input_ids"] == [[2, 5, 6], [2, 9]] and cut["completion_mask"] == [[0, 0, 1], [0, 1]]
    assert truncate_tokenized(ds, 5) is ds and truncate_tokenized(None, 3) is None
    # SFTTrainer's prepared rows carry `labels`: cut with the ids, and a row left with no trained label is dropped
    prepared = Dataset.from_list(
        [
            {"input_ids": [2, 5, 6, 7, 8], "labels": [-100, -100, 6, 7, 8]},
            {"input_ids": [2, 5, 6, 7], "labels": [-100, -100, -100, 7]},
        ]
    )
    cut = truncate_tokenized(prepared, 3)
    assert cut["input_ids"] == [[2, 5, 6]] and cut["labels"] == [[-100, -100, 6]]


# -------------------------------------------------------------------------------------------------- CPU: compile once


def _packed(lengths, vocab=4000, seed=0):
    ids = torch.randint(10, vocab, (1, sum(lengths)), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "position_ids": torch.cat([torch.arange(n) for n in lengths])[None], "use_cache": False}


def _frames() -> int:
    """Frames dynamo has compiled in this process: first compilations and recompilations."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["ok"])


@pytest.fixture
def fresh_dynamo():
    """No compiled code cached from an earlier test (dynamo's frame counter keeps counting: compare differences)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("attention", ["eager", "flex_attention"])
def test_one_mask_for_every_layer_is_exact_when_no_row_exceeds_the_window(tiny_model_dir, attention):
    """The tiny Gemma-2 alternates sliding (window 64) and global layers. Rows of at most 64 tokens: the sliding
    layers given the global layers' mask compute bit for bit the same logits. A row of 100: they do not (the
    control), and the change refuses a max_length past the window."""
    from paraphrx.fast_path import one_mask_for_every_layer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attention)
    model.eval()
    assert model.config.sliding_window == 64 and "sliding_attention" in model.config.layer_types
    within, past = _packed([64, 30, 64, 7]), _packed([100, 30])
    with torch.no_grad():
        before = {name: model(**batch).logits for name, batch in (("within", within), ("past", past))}
        with one_mask_for_every_layer(model, max_length=64) as applied:
            assert applied
            after = {name: model(**batch).logits for name, batch in (("within", within), ("past", past))}
        with one_mask_for_every_layer(model, max_length=65) as applied:
            assert not applied  # a row of 65 tokens could see one key too many
        with one_mask_for_every_layer(model, max_length=None) as applied:
            assert not applied
        again = model(**within).logits
    assert torch.equal(after["within"], before["within"])
    assert (after["past"] - before["past"]).abs().max() > 1e-3
    assert torch.equal(again, before["within"])  # undone: the sliding layers' own mask is back


def test_compiled_layers_train_and_evaluate_on_one_graph_each_whatever_the_length(tiny_model_dir, fresh_dynamo):
    """dynamo guards are the same on every backend, so the CPU (eager attention, aot_eager) shows them: the layers
    compile once for training and once for no-grad evaluation, however the packed length changes. Without the first
    layer's input requiring grad (the control) the first layer is a training graph of its own."""
    from paraphrx import library_internals as internals
    from paraphrx.fast_path import compiled_decoder_layers, decoder_layers

    def run(model) -> list[int]:
        start, frames = _frames(), []
        model.train()
        for lengths in ([20, 30], [17, 40, 5], [33]):
            model(**_packed(lengths)).logits.float().mean().backward()
            frames.append(_frames())
        model.eval()
        with torch.no_grad():
            for lengths in ([25, 9], [12, 50, 3]):
                model(**_packed(lengths))
                frames.append(_frames())
        return [count - start for count in frames]

    model = _with_lora(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    )
    with compiled_decoder_layers(model, backend="aot_eager"):
        assert run(model) == [1, 1, 1, 2, 2]
    torch._dynamo.reset()
    with ExitStack() as undo:  # the control: the same compilation without the input-gradient hook
        undo.enter_context(internals.floats_specialized())
        for layer in decoder_layers(model):
            undo.enter_context(internals.compiled(layer, dynamic=True, backend="aot_eager"))
        assert run(model)[:3] == [2, 2, 2]


def test_flex_masks_and_layers_compile_once_in_evaluation(tiny_model_dir, fresh_dynamo):
    """Flex attention (forward only on the CPU): with one mask for every layer and the block masks built by one
    length-symbolic compilation, evaluation at three packed lengths compiles two frames in all (the layer, the mask
    builder). The control, with the sliding layers' own mask: two of each."""
    from paraphrx.fast_path import (
        block_masks_compiled_once,
        compiled_decoder_layers,
        one_mask_for_every_layer,
        packed_masks_without_host_read,
    )

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation="flex_attention"
    ).eval()
    frames = {}
    for one_mask in (True, False):
        torch._dynamo.reset()
        with ExitStack() as undo, torch.no_grad():
            undo.enter_context(compiled_decoder_layers(model, backend="aot_eager"))
            undo.enter_context(block_masks_compiled_once(backend="aot_eager"))
            undo.enter_context(packed_masks_without_host_read())
            if one_mask:
                assert undo.enter_context(one_mask_for_every_layer(model, max_length=64))
            start, frames[one_mask] = _frames(), []
            for lengths in ([20, 30], [17, 40, 5], [33, 2]):
                model(**_packed(lengths))
                frames[one_mask].append(_frames() - start)
    assert frames == {True: [2, 2, 2], False: [4, 4, 4]}
