"""Evaluation generation speed: a per-example `generate` loop (the upstream way) vs paraphrx's batched path.

Both answer the same Alpaca-style prompts (real paraphrases from the shipped sample) greedily with the same model,
and the batched side calls `paraphrx.eval.generation.generate_batched`, the function `evaluate_paraphrx.py` uses.
Random weights never stop early, so both sides generate exactly `--max_new_tokens` (min_new_tokens = max) and the
token counts match. The per-example loop is slow, so it runs on `--baseline_prompts` of the prompts (spread over
the length range); its tokens/s is compared with the batched path's over all `--num_prompts`, and the greedy
texts are compared on the prompts both answered.

    python benchmarks/bench_eval.py                          # gemma-2-2b-it's exact shapes, random bf16 weights, GPU
    python benchmarks/bench_eval.py --tiny --device cpu      # smoke test: tiny Gemma-2, a few prompts, CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: import train_sft and benchmarks.* as the tests do

from paraphrx.eval.generation import generate_batched, generate_per_example  # noqa: E402
from paraphrx.tiny_gemma import build_model, build_tokenizer  # noqa: E402

ALPACA = REPO / "data" / "alpaca_gemma-2-2b-it.json"
TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def gemma2_2b_config(tokenizer):
    """google/gemma-2-2b-it's config.json, written out (no download)."""
    from transformers import Gemma2Config

    return Gemma2Config(
        vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=4096,
        max_position_embeddings=8192, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )


def build(args, tokenizer):
    from transformers import AutoModelForCausalLM, GenerationConfig

    dtype = getattr(torch, args.dtype)
    if args.tiny:
        model = build_model(tokenizer).to(dtype)
    else:
        torch.manual_seed(0)
        with torch.device(args.device):
            model = AutoModelForCausalLM.from_config(gemma2_2b_config(tokenizer), dtype=dtype,
                                                     attn_implementation="eager")
        # As in gemma-2-2b-it's generation_config.json: stop at <eos> or <end_of_turn>.
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")])
    model.config._attn_implementation = "eager"
    return model.to(args.device).eval()


def prompts_from_sample(n: int) -> list[str]:
    """Every paraphrase of the shipped Alpaca sample (alpaca template), cycled up to n."""
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))
    texts = [TEMPLATE.format(instruction=p["paraphrase"]) for row in rows for p in row["paraphrases"]]
    return [texts[i % len(texts)] for i in range(n)]


def timed(fn, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny Gemma-2 instead of gemma-2-2b-it's shapes")
    parser.add_argument("--num_prompts", type=int, default=512)
    parser.add_argument("--baseline_prompts", type=int, default=32, help="prompts the per-example loop answers")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--dtype", default=None, help="default: bfloat16, float32 with --tiny")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("float32" if args.tiny else "bfloat16")
    args.baseline_prompts = min(args.baseline_prompts, args.num_prompts)

    tokenizer = build_tokenizer([ALPACA])  # any tokenizer will do for text: ids stay below both vocab sizes
    model = build(args, tokenizer)
    prompts = prompts_from_sample(args.num_prompts)
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    # The baseline's prompts: spread evenly over the length order, so its mix of lengths matches the whole set.
    by_length = sorted(range(len(prompts)), key=lambda i: lengths[i])
    step = len(by_length) / args.baseline_prompts
    baseline_idx = [by_length[int(k * step)] for k in range(args.baseline_prompts)]
    force = {"min_new_tokens": args.max_new_tokens}  # random weights: never stop early, equal lengths both sides

    generate_batched(model, tokenizer, prompts[:2], batch_size=2, max_new_tokens=2, min_new_tokens=2)  # warm-up
    single, t_single = timed(lambda: generate_per_example(
        model, tokenizer, [prompts[i] for i in baseline_idx], max_new_tokens=args.max_new_tokens, **force), args.device)
    batched, t_batched = timed(lambda: generate_batched(
        model, tokenizer, prompts, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, **force), args.device)

    tps_single = args.baseline_prompts * args.max_new_tokens / t_single
    tps_batched = args.num_prompts * args.max_new_tokens / t_batched
    same = sum(batched[i] == s for i, s in zip(baseline_idx, single)) / len(single)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"date        {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, {device_name}")
    print(f"model       {'tiny Gemma-2' if args.tiny else 'gemma-2-2b-it shapes (random weights)'}, {args.dtype}, "
          f"eager attention, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    print(f"prompts     {args.num_prompts} (median {statistics.median(lengths):.0f} tokens, max {max(lengths)}), "
          f"{args.max_new_tokens} new tokens each")
    print(f"per-example {args.baseline_prompts} prompts in {t_single:.2f} s: {tps_single:,.1f} tokens/s")
    print(f"batched     {args.num_prompts} prompts, batch {args.batch_size}, in {t_batched:.2f} s: "
          f"{tps_batched:,.1f} tokens/s")
    print(f"speed-up    {tps_batched / tps_single:.1f}x")
    print(f"identical greedy text on the {len(single)} shared prompts: {same:.0%}")
    if args.device.startswith("cuda"):
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
