"""The decode engine on the tiny Gemma-2 in float32: HF's logits and HF's one-prompt-at-a-time greedy text, for the
base and several adapters mixed in one batch, also on an NF4 base (bitsandbytes on the CPU)."""

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from paraphrx import library_internals as internals
from paraphrx.eval.engine import (
    BASE,
    GemmaDecodeEngine,
    Kernels,
    Request,
    UnsupportedModel,
    decoder_kernels,
    generate_texts,
    unsupported_reason,
)
from paraphrx.eval.generation import (
    active_model,
    attach_adapters,
    for_generation,
    generate_per_example,
    greedy_config,
)
from paraphrx.modeling import load_tokenizer
from tests.conftest import make_adapter
from tests.paraphrx.eval.test_generation import PROMPTS

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """Three adapters with random non-zero A and B on all 7 projections; different ranks, one with rsLoRA."""
    root = tmp_path_factory.mktemp("engine-adapters")
    return {
        "a1": make_adapter(tiny_model_dir, root / "a1", 1, ALL_PROJECTIONS, r=4),
        "a2": make_adapter(tiny_model_dir, root / "a2", 2, ALL_PROJECTIONS, r=8, use_rslora=True),
        "a3": make_adapter(tiny_model_dir, root / "a3", 3, ("q_proj", "v_proj", "down_proj"), r=2),
    }


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def load(model_dir, nf4=False, device="cpu"):
    quant = (
        BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
        if nf4
        else None
    )
    # eager: Gemma-2's soft-capped attention, as the recipes load it. Left to choose, a transformers version may pick
    # SDPA, which drops the soft-cap (on the H200's transformers 5.17 the reference parted from the engine by up to
    # 0.07 in the logits)
    return AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, quantization_config=quant, device_map={"": device}, attn_implementation="eager"
    ).eval()


def reference_answers(model_dir, adapters, jobs, max_new_tokens, nf4=False, eos=None, device="cpu"):
    """HF `generate`, one prompt at a time, the adapter active and unmerged (PEFT), the base under disable_adapter."""
    model = load(model_dir, nf4, device)
    if eos is not None:
        model.generation_config.eos_token_id = eos
    model = attach_adapters(model, adapters)
    tokenizer = for_generation(
        load_tokenizer(type("Args", (), {"model_name_or_path": str(model_dir), "model_revision": None})())
    )
    answers = {}
    for name, prompts in jobs.items():
        with active_model(model, name) as active:
            answers[name] = dict(zip(prompts, generate_per_example(active, tokenizer, prompts, max_new_tokens)))
    return answers


def test_prefill_logits_equal_hf_with_unmerged_peft_adapters(tiny_model_dir, adapters, tokenizer):
    engine = GemmaDecodeEngine(load(tiny_model_dir), adapters)
    models = ["a1", BASE, "a2", "a3", "a1"]
    ids = tokenizer(PROMPTS[:5])["input_ids"]
    ours = engine.prompt_logits(ids, models)
    peft_model = attach_adapters(load(tiny_model_dir), adapters)
    for i, name in enumerate(models):
        with active_model(peft_model, name) as active, torch.no_grad():
            expected = active(torch.tensor([ids[i]])).logits[0]
        torch.testing.assert_close(ours[i, : len(ids[i])], expected, rtol=0, atol=2e-5)
    with active_model(peft_model, BASE) as base, torch.no_grad():
        plain = base(torch.tensor([ids[0]])).logits[0]
    assert (ours[0, : len(ids[0])] - plain).abs().max() > 1e-2  # the adapter really changes the logits


def test_bf16_prefill_logits_are_bitwise_peft_on_a_bf16_base(tiny_model_dir, adapters, tokenizer):
    """In bf16 the LoRA update is computed as PEFT does (fp32, added to the base output in fp32, rounded once), so on
    a bf16 base the engine's logits are HF's bit for bit (all of them on the development VM; a little slack for
    another CPU's GEMM kernels). The update fused in bf16 is not: most logits differ in the last bits."""

    def bf16():
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()

    models, ids = [BASE, "a1", "a2"], tokenizer(PROMPTS[:3])["input_ids"]
    ours = GemmaDecodeEngine(bf16(), adapters).prompt_logits(ids, models)
    fused = GemmaDecodeEngine(bf16(), adapters, exact_lora=False).prompt_logits(ids, models)
    peft_model = attach_adapters(bf16(), adapters)
    for i, name in enumerate(models):
        with active_model(peft_model, name) as active, torch.no_grad():
            expected = active(torch.tensor([ids[i]])).logits[0]
        assert (ours[i, : len(ids[i])] == expected).float().mean() > 0.99
        if name != BASE:
            assert (fused[i, : len(ids[i])] == expected).float().mean() < 0.9


def _eos_that_fires(engine, tokenizer, jobs):
    """A token id some answers produce early and others never: made a stop id, it ends some rows mid-answer."""
    requests = [Request(m, ids, 12) for m, ps in jobs.items() for ids in tokenizer(ps)["input_ids"]]
    answers = [tokens for group in engine.generate(requests) for _, tokens in group]
    counts = {}
    for tokens in answers:
        for t in set(tokens[2:8]):
            counts[t] = counts.get(t, 0) + 1
    return min(counts, key=lambda t: abs(counts[t] - len(answers) / 3))


def test_greedy_text_equals_per_example_generation(tiny_model_dir, adapters, tokenizer):
    """Base + three adapters in one run, prompts of different lengths, 12 slots for 20 requests (refills, then the
    tail compacted into 8 slots), answers long enough to pass the sliding window (64), some rows stopped by an eos
    id."""
    jobs = {BASE: PROMPTS, "a1": PROMPTS[::-1], "a2": PROMPTS[1:5], "a3": PROMPTS[2:4]}
    model = load(tiny_model_dir)
    extra_eos = _eos_that_fires(GemmaDecodeEngine(load(tiny_model_dir), adapters), tokenizer, jobs)
    eos = [tokenizer.eos_token_id, extra_eos]
    model.generation_config.eos_token_id = eos
    engine = GemmaDecodeEngine(model, adapters, max_slots=12, chunk_steps=4)
    ours = generate_texts(engine, tokenizer, jobs, max_new_tokens=72)
    expected = reference_answers(tiny_model_dir, adapters, jobs, 72, eos=eos)
    assert ours == expected
    lengths = [
        len(tokenizer(a, add_special_tokens=False)["input_ids"]) for texts in ours.values() for a in texts.values()
    ]
    assert min(lengths) < 40 and max(lengths) > 64  # some rows stopped at the eos, others ran past the window
    assert engine.stats["prefill_batches"] >= 2 and engine.stats["compactions"] >= 1  # refilled, then compacted
    assert len({ours["a1"][p] for p in PROMPTS} & {ours[BASE][p] for p in PROMPTS}) == 0  # adapters change text


def test_flex_decode_attention_gives_the_padded_attentions_text(tiny_model_dir, adapters, tokenizer):
    """Each row reading only its own keys (flex, on by default on CUDA) against every row reading up to the
    longest: the same greedy text in float32, past the sliding window (64), over a refill and a compaction."""
    jobs = {BASE: PROMPTS, "a1": PROMPTS[::-1], "a2": PROMPTS[1:5]}
    options = dict(max_slots=12, chunk_steps=8)
    padded = GemmaDecodeEngine(load(tiny_model_dir), adapters, flex_attention=False, **options)
    flex = GemmaDecodeEngine(load(tiny_model_dir), adapters, flex_attention=True, **options)
    assert not GemmaDecodeEngine(load(tiny_model_dir), adapters).flex  # eager on the CPU by default
    ours = generate_texts(flex, tokenizer, jobs, max_new_tokens=72)
    assert ours == generate_texts(padded, tokenizer, jobs, max_new_tokens=72)
    assert flex.stats["compactions"] >= 1 and flex._state["max_len"] % 128 == 0


@pytest.mark.parametrize("requests", [12, 100, 512])
def test_prepare_captures_every_width_the_run_can_decode_in(tiny_model_dir, monkeypatch, requests):
    """With flex attention on CUDA the cache length is fixed, so `prepare` captures the decode step at the slots and
    at every width a compaction can choose (`_next_width`) before the run: none is compiled halfway."""
    from paraphrx.eval.engine import _next_width

    engine, batch = GemmaDecodeEngine(load(tiny_model_dir), max_slots=512), [Request(BASE, [2, 5, 7], 4)] * requests
    engine.flex = True
    assert engine.prepare(batch) == min(requests, 512)  # on the CPU: the cache only
    engine.cuda_graphs = True  # then as on CUDA, the captures recorded instead of run
    captured = []
    monkeypatch.setattr(engine, "_capture", lambda width, kv_len, capacity: captured.append((width, kv_len)))
    slots = engine.prepare(batch)
    assert slots == min(requests, 512) and {kv for _, kv in captured} == {engine._state["max_len"]}
    widths = {w for w, _ in captured}
    assert {_next_width(live, slots) for live in range(1, slots + 1)} | {slots} == widths


def test_adapter_groups_stay_even_so_each_row_multiplies_about_its_own_adapter_only(
    tiny_model_dir, adapters, tokenizer
):
    """The queue takes a prompt's models in turn, so a refill spreads over the adapters and the groups' capacity stays
    near each adapter's share of the slots: the LoRA matmuls compute few rows beyond the adapter rows (masking every
    row with every adapter would compute 3 per adapter row here, 4 once the base's rows count)."""
    # model after model, as `generate_texts` asks; 36 prompts of one length (the length sort leaves them in order)
    prompts = [[2] + [100 + (7 * i + j) % 200 for j in range(5)] for i in range(36)]
    requests = [Request(m, ids, 6 + i % 5) for m in (BASE, "a1", "a2", "a3") for i, ids in enumerate(prompts)]
    engine = GemmaDecodeEngine(load(tiny_model_dir), adapters, max_slots=48, chunk_steps=4)
    answers = [tokens for group in engine.generate(requests) for _, tokens in group]
    assert len(answers) == len(requests) and engine.stats["prefill_batches"] >= 2  # refilled
    assert engine.stats["adapter_rows"] > 0 and engine.stats["lora_rows"] < 1.5 * engine.stats["adapter_rows"]


def test_static_batches_and_one_slot_give_the_same_text(tiny_model_dir, adapters, tokenizer):
    jobs = {BASE: PROMPTS[:3], "a2": PROMPTS[2:5]}
    expected = generate_texts(GemmaDecodeEngine(load(tiny_model_dir), adapters), tokenizer, jobs, 20)
    static = GemmaDecodeEngine(load(tiny_model_dir), adapters, max_slots=4, continuous=False, chunk_steps=3)
    assert generate_texts(static, tokenizer, jobs, 20) == expected
    single = GemmaDecodeEngine(load(tiny_model_dir), adapters, max_slots=1)
    assert generate_texts(single, tokenizer, jobs, 20) == expected


def test_nf4_base_dequantized_once_equals_peft_on_linear4bit(tiny_model_dir, adapters, tokenizer):
    import bitsandbytes as bnb

    jobs = {BASE: PROMPTS[:4], "a1": PROMPTS[2:6], "a2": PROMPTS[:2]}
    model = load(tiny_model_dir, nf4=True)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    engine = GemmaDecodeEngine(model, adapters, max_slots=4)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())  # dequantized once
    ours = generate_texts(engine, tokenizer, jobs, max_new_tokens=24)
    assert ours == reference_answers(tiny_model_dir, adapters, jobs, 24, nf4=True)
    assert (
        ours[BASE] != generate_texts(GemmaDecodeEngine(load(tiny_model_dir)), tokenizer, {BASE: PROMPTS[:4]}, 24)[BASE]
    )  # NF4 rounding changes the answers: the base really is NF4


def test_request_limits_and_answers_as_they_finish(tiny_model_dir, tokenizer):
    engine = GemmaDecodeEngine(load(tiny_model_dir), max_slots=2, chunk_steps=2)
    ids = tokenizer(PROMPTS[:4])["input_ids"]
    limits = [1, 9, 3, 5]
    groups = list(engine.generate([Request(BASE, x, n, key=i) for i, (x, n) in enumerate(zip(ids, limits))]))
    finished = {request.key: tokens for group in groups for request, tokens in group}
    assert [len(finished[i]) for i in range(4)] == limits
    assert len(groups) >= 3  # yielded as rows finish, not all at the end
    full = dict((r.key, t) for g in engine.generate([Request(BASE, ids[1], 9, key=1)]) for r, t in g)
    assert full[1] == finished[1]


@pytest.fixture(scope="module")
def compiled_bf16_engine(tiny_model_dir, adapters):
    """The engine with its elementwise steps compiled as on CUDA (inductor's CPU backend here), in bf16, where a
    fused kernel that skipped one of eager's roundings would show."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    return GemmaDecodeEngine(model, adapters, max_slots=6, chunk_steps=8, compile_kernels=True)


def assert_as_eager_in_bf16(ours, eager):
    """Nearly all bitwise (a fused kernel that skips one of eager's roundings to bf16 changes a fifth to a half of
    the values, and breaks the argmax's ties otherwise), the rest within bf16 rounding (an fp32 sum of a norm or a
    softmax may be added up in another order)."""
    for a, b in zip(*((x,) if isinstance(x, torch.Tensor) else x for x in (ours, eager)), strict=True):
        assert (a == b).float().mean() > 0.99
        if a.is_floating_point():
            torch.testing.assert_close(a, b)


def test_compiled_kernels_compute_what_the_eager_ones_do_for_any_shape(compiled_bf16_engine):
    from torch._dynamo.utils import counters

    engine = compiled_bf16_engine
    compiled = engine.kernels
    eager = decoder_kernels(engine.eps, engine.scaling, engine.attn_cap, engine.final_cap, engine.act, compiled=False)
    hidden, d, kv, g = engine.final_norm.shape[0], engine.head_dim, engine.kv_heads, engine.heads // engine.kv_heads
    low = torch.finfo(torch.bfloat16).min  # the additive mask's "not visible"
    torch.manual_seed(0)

    def bf16(*shape, scale=1.0):
        return (torch.randn(*shape) * scale).bfloat16()

    def cases(n, s):
        """Each kernel's arguments as the engine passes them: n tokens, s keys (views where the engine has views)."""
        qkv = bf16(n, engine.heads + 2 * kv, d)
        gate_up = bf16(n, 2 * engine.intermediate, scale=2.0)
        mask = torch.zeros(n, 1, 1, s).bfloat16().masked_fill_(torch.rand(n, 1, 1, s) < 0.3, low)
        norm, next_norm = engine.layers[0].norms[:2]  # the engine's weights (not inference tensors: no recompile)
        return {
            "norm": (bf16(n, hidden, scale=3.0), norm),
            "residual_norm": (bf16(n, hidden), bf16(n, hidden, scale=3.0), norm, next_norm),
            "rotate": (qkv[:, : engine.heads + kv], bf16(n, 1, d), bf16(n, 1, d)),
            "probs": (bf16(n, kv, g, s, scale=30.0), mask),
            "glu": gate_up.split(engine.intermediate, dim=-1),
            "greedy": (bf16(n, 4 * s, scale=60.0),),  # soft-capped to 30: bf16 ties, the first one wins
            # plain base: the sum rounded; the update's rows read in another order, the last one for the base
            "lora_add": (bf16(n, hidden), torch.randn(n + 1, hidden) * 0.01, torch.randperm(n + 1)[:n], False),
            # the shrink's three float32 parts summed, n rows of 5 adapters' blocks picked into 5 groups of 4, scaled
            "lora_pick": (torch.randn(n, 3, 5, 48), torch.randint(0, 5 * n, (5, 4)), torch.rand(5, 1, 1)),
        }

    assert set(cases(2, 2)) == {f.name for f in dataclasses.fields(Kernels)}
    assert all(hasattr(getattr(compiled, name), "_torchdynamo_orig_callable") for name in cases(2, 2))  # compiled
    with torch.inference_mode():
        for name, args in cases(24, 40).items():  # compiles every kernel (unless an earlier test did)
            assert_as_eager_in_bf16(getattr(compiled, name)(*args), getattr(eager, name)(*args))
        after_first = counters["stats"]["unique_graphs"]
        for name, args in cases(40, 72).items():
            assert_as_eager_in_bf16(getattr(compiled, name)(*args), getattr(eager, name)(*args))
        assert counters["stats"]["unique_graphs"] == after_first  # one graph serves other sizes
        causal = torch.zeros(16, 16).bfloat16().masked_fill_(torch.ones(16, 16, dtype=torch.bool).triu(1), low)
        prefill = (bf16(2, kv, g, 16, 16, scale=30.0), causal)  # the prefill's [m, kv, g, p, p] against one mask
        assert_as_eager_in_bf16(compiled.probs(*prefill), eager.probs(*prefill))
        four_bit = (bf16(8, hidden), torch.randn(9, hidden) * 0.01, torch.arange(8).flip(0), True)  # NF4: rounded first
        assert_as_eager_in_bf16(compiled.lora_add(*four_bit), eager.lora_add(*four_bit))


def test_engine_with_compiled_kernels_gives_the_eager_engines_logits_and_text(
    compiled_bf16_engine, tiny_model_dir, adapters, tokenizer
):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    eager = GemmaDecodeEngine(model, adapters, max_slots=6, chunk_steps=8)
    assert compiled_bf16_engine.compile_kernels and not eager.compile_kernels  # eager by default on the CPU
    models, ids = [BASE, "a1", "a2", "a3"], tokenizer(PROMPTS[:4])["input_ids"]
    assert_as_eager_in_bf16(compiled_bf16_engine.prompt_logits(ids, models), eager.prompt_logits(ids, models))
    jobs = {BASE: PROMPTS[:4], "a1": PROMPTS[2:6], "a2": PROMPTS[:3]}
    ours = generate_texts(compiled_bf16_engine, tokenizer, jobs, 40)
    assert ours == generate_texts(eager, tokenizer, jobs, 40)
    assert len({ours["a1"][p] for p in PROMPTS[2:4]} & {ours[BASE][p] for p in PROMPTS[2:4]}) == 0


def test_compiled_kernels_past_the_recompile_limit_run_eagerly(compiled_bf16_engine):
    """Every engine of a process shares dynamo's cache of each kernel, and each dtype compiles another graph: past
    the limit a kernel must still answer (eagerly), not fail the evaluation."""
    engine = compiled_bf16_engine
    compiled = decoder_kernels(engine.eps, engine.scaling, engine.attn_cap, engine.final_cap, engine.act, True)
    eager = decoder_kernels(engine.eps, engine.scaling, engine.attn_cap, engine.final_cap, engine.act, False)
    weight = engine.layers[0].norms[0]
    with torch._dynamo.config.patch(recompile_limit=1):
        for dtype in (torch.bfloat16, torch.float32, torch.float16):
            x = torch.randn(5, weight.shape[0]).to(dtype)
            torch.testing.assert_close(compiled.norm(x, weight), eager.norm(x, weight))


def test_without_inductors_rounding_option_the_kernels_stay_eager(monkeypatch):
    assert internals.inductor_eager_rounding() == {"emulate_precision_casts": True}  # this torch has it
    monkeypatch.setattr(internals, "inductor_eager_rounding", lambda: None)
    kernels = decoder_kernels(1e-6, 0.5, 50.0, 30.0, torch.tanh, compiled=True)
    assert not hasattr(kernels.norm, "_torchdynamo_orig_callable")


def test_models_the_engine_does_not_cover_are_named(tiny_model_dir, tmp_path, adapters):
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=32,
        )
    )
    assert "not a plain Gemma2ForCausalLM" in unsupported_reason(llama, {})
    dora = make_adapter(tiny_model_dir, tmp_path / "dora", 0, use_dora=True)
    reason = unsupported_reason(load(tiny_model_dir), {"a1": adapters["a1"], "dora": dora})
    assert reason.startswith(str(dora / "adapter_config.json")) and "use_dora" in reason
    with pytest.raises(UnsupportedModel, match="use_dora"):
        GemmaDecodeEngine(load(tiny_model_dir), {"dora": dora})
    with pytest.raises(ValueError, match="no such model"):
        list(GemmaDecodeEngine(load(tiny_model_dir)).generate([Request("a1", [2, 5], 3)]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)")
@pytest.mark.parametrize("flex", [True, False], ids=["flex", "padded"])
@pytest.mark.parametrize("nf4", [False, True], ids=["float32", "nf4-float32"])
def test_cuda_graph_decode_equals_per_example_generation(tiny_model_dir, adapters, tokenizer, nf4, flex):
    """On the GPU: decode steps replayed from CUDA graphs (several widths and KV lengths: refills, compaction, the
    sliding window, several adapter group widths), with flex decode attention or the padded attention, give HF's
    one-at-a-time greedy tokens in float32, with and without the NF4 base. cuBLAS picks
    its float32 kernels by shape (a batch of rows, fused q|k|v, against one prompt at a time), so sums round
    differently, and bitsandbytes answers one prompt at a time through its fused 4-bit kernels where the engine (and
    training) dequantize and multiply; so a greedy choice between two logits tied to that rounding can go either
    way. Where the tokens part, the reference's own logits must show such a tie (within 2e-3; a wrong adapter, mask
    or cache slot moves them by tenths), never a real difference."""
    jobs = {BASE: PROMPTS, "a1": PROMPTS[::-1], "a2": PROMPTS[1:5], "a3": PROMPTS[2:4]}
    engine = GemmaDecodeEngine(
        load(tiny_model_dir, nf4, "cuda"),
        adapters,
        max_slots=12,
        chunk_steps=4,
        kv_bucket=16,
        flex_attention=flex,
    )
    ids = dict(zip(PROMPTS, tokenizer(PROMPTS)["input_ids"]))
    requests = [Request(model, ids[p], 72, key=p) for model, prompts in jobs.items() for p in prompts]
    ours = {(r.model, r.key): tokens for group in engine.generate(requests) for r, tokens in group}
    # flex: one graph per width (12, then 8); padded: per width and KV length
    assert engine.stats["graphs_captured"] >= (2 if flex else 3) and engine.stats["compactions"] >= 1
    again = {(r.model, r.key): tokens for group in engine.generate(requests) for r, tokens in group}
    assert again == ours  # replaying the captured graphs again

    reference = attach_adapters(load(tiny_model_dir, nf4, "cuda"), adapters)
    config = greedy_config(reference, tokenizer, 72)
    parted, margins = 0, []
    for (model, prompt), tokens in ours.items():
        prompt_ids = torch.tensor([ids[prompt]], device="cuda")
        with active_model(reference, model) as active, torch.inference_mode():
            theirs = active.generate(input_ids=prompt_ids, generation_config=config)[0, prompt_ids.shape[1] :].tolist()
            if tokens == theirs:
                continue
            parted += 1
            at = next(i for i, (a, b) in enumerate(zip(tokens, theirs)) if a != b)
            prefix = torch.tensor([ids[prompt] + theirs[:at]], device="cuda")
            logits = active(input_ids=prefix).logits[0, -1].float()
            margins.append((logits[theirs[at]] - logits[tokens[at]]).item())
    print(
        f"float32 on CUDA ({'NF4' if nf4 else 'plain'} base, {'flex' if flex else 'padded'} attention): "
        f"{len(ours) - parted}/{len(ours)} answers token for token equal; where they part, the reference's margin between the two tokens: {margins}"
    )
    assert all(margin < 2e-3 for margin in margins), margins
