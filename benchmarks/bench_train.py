"""Training speed, side by side in one run: the seed recipe, TRL's best knobs, and this project's GPU path.

    python benchmarks/bench_train.py                 # on a GPU: gemma-2-2b-it's exact shapes, random weights
    python benchmarks/bench_train.py --tiny --device cpu --steps 2 --warmup 1 --configs seed   # plumbing smoke test

Every configuration trains the same pre-tokenized examples (Alpaca-like lengths: prompt median ~45, completion
median ~180 tokens), 16 examples per optimizer step, LoRA r16/α32/dropout 0.05 on the 7 projections of an NF4
double-quantized base, AdamW lr 2e-4:
  seed  the seed recipe: transformers Trainer + peft, eager attention, padded micro-batch 4 x accumulation 4,
        gradient checkpointing, bf16.
  trl   TRL 1.16 by configuration alone: SFTTrainer, padding-free 16-sequence batches, flex attention, Liger kernels,
        no checkpointing (DESIGN.md's best knob setting).
  ours  `train_sft.py`'s own path on recipes/bucket1-4.yaml (`fast_path: auto` is on with CUDA): the same
        `load_model_and_tokenizer` and `build_trainer` calls, NF4 dequantized once, padding-free flex attention,
        compiled decoder layers and the rest of paraphrx/fast_path.py's CHANGES.
Each runs in its own process (clean memory and compile caches). Throughput counts real (non-pad) tokens over the
timed optimizer steps, wall clock from the end of the last warm-up step to the end of the last step. MFU is
6·N·tokens/s over the bf16 matmul rate measured in this run. The last lines print the table and the ratios.
`PARAPHRX_PROFILE=ours` (or seed/trl) also prints a torch.profiler kernel table for two timed steps of that config
and the GPU's idle gaps with what the host did in each (`PARAPHRX_PROFILE_TRACE=trace.json.gz` keeps the trace);
`PARAPHRX_SYNC_DEBUG=ours` lists every host-device synchronization of the last warm-up step with its Python stack.
`--variant NAME='recipe args'` adds a variant of ours (e.g. one lever switched off) to compare in the same run; words
of the form UPPER_CASE=value go to that process's environment (inductor's TORCHINDUCTOR_* settings, allocator
settings) and are listed in its result. `PARAPHRX_BENCH_WITHOUT=positions,lm_head,walks,workers` in a variant switches
those levers of ours off in its process (see `LEVERS`), to measure each one's gain in the same run.
Each result also lists the GPU time of every timed step (`step_ms`), so a recompile or a new CUDA graph recording
inside the timed window shows as an outlier.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: import train_sft and benchmarks.* as the tests do

# A benchmark run neither evaluates nor saves (the recipes evaluate, keep the best adapter and stop early by default)
NO_EVAL_NO_SAVE = (
    "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
    "--early_stopping_patience", "null",
)  # fmt: skip

CONFIGS = ("seed", "trl", "ours")
EXAMPLES_PER_STEP = 16
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# google/gemma-2-2b-it's config.json, written out so nothing is downloaded.
GEMMA2_2B = dict(
    vocab_size=256000,
    hidden_size=2304,
    intermediate_size=9216,
    num_hidden_layers=26,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=8192,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    attention_bias=False,
    query_pre_attn_scalar=256,
    sliding_window=4096,
    final_logit_softcapping=30.0,
    attn_logit_softcapping=50.0,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
    tie_word_embeddings=True,
)


def build_model_dir(path: Path, tiny: bool, device: str) -> Path:
    """Save a Gemma-2 with random weights (gemma-2-2b-it's shapes, or tiny) plus a tokenizer, like a Hub folder."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from paraphrx.tiny_gemma import build_tokenizer, save_tiny_gemma

    if (path / "config.json").exists():
        return path
    if tiny:
        return save_tiny_gemma(path)
    tokenizer = build_tokenizer([REPO / "data" / "alpaca_gemma-2-2b-it.json"])
    torch.manual_seed(0)
    with torch.device(device):
        model = Gemma2ForCausalLM(Gemma2Config(**GEMMA2_2B)).to(torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)  # token ids in the data are drawn directly; the tokenizer supplies <pad>/<eos>
    del model
    return path


def synthetic_examples(num: int, vocab: int, seed: int = 0, max_length: int = 1024) -> list[dict]:
    """Pre-tokenized examples with Alpaca-like lognormal lengths; ids avoid the special tokens (0..9)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    prompt_len = np.clip(rng.lognormal(np.log(45), 0.5, num), 8, 256).astype(int)
    completion_len = np.clip(rng.lognormal(np.log(180), 0.6, num), 4, max_length - 256).astype(int)
    rows = []
    for p, c in zip(prompt_len, completion_len):
        ids = [2] + rng.integers(10, vocab, p + c - 1).tolist()  # <bos> + prompt + completion
        rows.append({"input_ids": ids, "completion_mask": [0] * p + [1] * c})
    return rows


def measure_matmul_tflops(device: str) -> float:
    """bf16 8192^3 matmul rate on this device (mean of 10 after warm-up), the MFU denominator."""
    import torch

    if device != "cuda":
        return float("nan")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * 8192**3 * 10 / (start.elapsed_time(end) / 1e3) / 1e12


# ---------------------------------------------------------------------------------------------------------------
# The three trainers. Each returns a transformers Trainer ready to `.train()`; `undo` (an ExitStack) takes what a
# builder changes in the process, undone when the training is over (ours: the fast path's changes).


def _nf4_config(torch):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=torch.bfloat16,
    )


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")


def _common_args(out: str, steps: int, on_gpu: bool) -> dict:
    return dict(
        output_dir=out,
        max_steps=steps,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-6,
        weight_decay=0.0,
        logging_steps=10_000,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        bf16=on_gpu,
        use_cpu=not on_gpu,
        dataloader_pin_memory=on_gpu,
        seed=0,
        disable_tqdm=True,
    )


def build_seed_trainer(model_dir, rows, out, steps, on_gpu, undo):
    """The seed: plain Trainer + peft LoRA on NF4, eager, padded micro-batch 4 x 4, gradient checkpointing."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        quantization_config=_nf4_config(torch),
        dtype=torch.bfloat16,
        attn_implementation="eager",
        device_map={"": 0} if on_gpu else None,
    )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, _lora())

    def collate(batch):  # pad to the longest, right side; labels mask prompt and padding
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        att = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            att[i, :n] = 1
            keep = torch.tensor(b["completion_mask"], dtype=torch.bool)
            labels[i, :n] = torch.where(keep, ids[i, :n], -100)
        return {"input_ids": ids, "attention_mask": att, "labels": labels}

    args = TrainingArguments(
        per_device_train_batch_size=4,
        gradient_accumulation_steps=4,
        remove_unused_columns=False,
        **_common_args(out, steps, on_gpu),
    )
    return Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collate)


def build_trl_trainer(model_dir, rows, out, steps, on_gpu, undo):
    """TRL by configuration alone: padding-free, flex attention, Liger kernels, no checkpointing."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        quantization_config=_nf4_config(torch),
        dtype=torch.bfloat16,
        attn_implementation="flex_attention" if on_gpu else "eager",
        device_map={"": 0} if on_gpu else None,
    )
    args = SFTConfig(
        per_device_train_batch_size=16,
        gradient_accumulation_steps=1,
        padding_free=True,
        gradient_checkpointing=False,
        use_liger_kernel=on_gpu,
        max_length=None,
        **_common_args(out, steps, on_gpu),
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=_lora(),
    )


def build_ours_trainer(model_dir, rows, out, steps, on_gpu, undo, recipe_args=()):
    """This project's path, through the functions `train_sft.py` calls, on the recipe users run (bucket1-4);
    `recipe_args` are extra recipe overrides (a `--variant`)."""
    from datasets import Dataset

    from paraphrx.modeling import load_model_and_tokenizer
    from paraphrx.recipe_cli import parse_recipe
    from paraphrx.trainer_factory import build_trainer

    script_args, training_args, model_args = parse_recipe(
        [
            str(REPO / "recipes" / "bucket1-4.yaml"),
            "--model_name_or_path",
            str(model_dir),
            "--output_dir",
            out,
            "--run_name",
            "bench",
            "--max_steps",
            str(steps),
            "--warmup_steps",
            "1",
            "--logging_steps",
            "10000",
            *NO_EVAL_NO_SAVE,
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
            "--seed",
            "0",
            "--fast_path",
            "on" if on_gpu else "off",
            "--bf16",
            str(on_gpu).lower(),
            "--use_cpu",
            str(not on_gpu).lower(),
            *recipe_args,
        ]
    )
    model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    return build_trainer(model, tokenizer, training_args, model_args, Dataset.from_list(rows), undo=undo)


BUILDERS = {"seed": build_seed_trainer, "trl": build_trl_trainer, "ours": build_ours_trainer}


def run_worker(
    config: str,
    model_dir: Path,
    steps: int,
    warmup: int,
    on_gpu: bool,
    result_path: Path,
    recipe_args: str | None = None,
    env_names: tuple[str, ...] = (),
) -> None:
    """Train one configuration and write its throughput figures as JSON."""
    import torch
    from transformers import TrainerCallback

    switch_off_levers(list(filter(None, os.environ.get("PARAPHRX_BENCH_WITHOUT", "").split(","))))
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    rows = synthetic_examples(EXAMPLES_PER_STEP * (steps + warmup), vocab)
    with tempfile.TemporaryDirectory() as out, ExitStack() as undo:
        if recipe_args is not None:  # a variant of ours
            trainer = build_ours_trainer(model_dir, rows, out, steps + warmup, on_gpu, undo, shlex.split(recipe_args))
        else:
            trainer = BUILDERS[config](model_dir, rows, out, steps + warmup, on_gpu, undo)

        # Real tokens (ids are drawn >= 10, padding is 0), summed on the device: reading them every micro-step would
        # synchronize and stop the CPU from queueing ahead, which is not what training does.
        count = {"tokens": torch.zeros((), dtype=torch.long, device="cuda" if on_gpu else "cpu")}
        original_step = trainer.training_step

        def counting_step(model, inputs, *args, **kwargs):
            count["tokens"] += (inputs["input_ids"] != 0).sum()
            return original_step(model, inputs, *args, **kwargs)

        trainer.training_step = counting_step
        marks: dict = {}

        step_events = []

        class Clock(TrainerCallback):  # synchronizes only at the two marks
            def on_step_end(self, args, state, control, **kw):
                if on_gpu and state.global_step >= warmup:  # per-step GPU time, read after training
                    step_events.append(torch.cuda.Event(enable_timing=True))
                    step_events[-1].record()
                if state.global_step in (warmup, warmup + steps):
                    if on_gpu:
                        torch.cuda.synchronize()
                    marks[state.global_step] = (time.perf_counter(), int(count["tokens"]))

        trainer.add_callback(Clock())
        if on_gpu and os.environ.get("PARAPHRX_PROFILE") == config:  # kernel table + GPU idle gaps for two timed steps
            trainer.add_callback(_profile_callback(warmup, marks))
        if (
            on_gpu and os.environ.get("PARAPHRX_SYNC_DEBUG") == config
        ):  # where the host waits for the GPU, last warm-up step
            trainer.add_callback(_sync_debug_callback(warmup))
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        output = trainer.train()
        (t0, n0), (t1, n1) = marks[warmup], marks[warmup + steps]
        seconds = t1 - t0
        result = {
            "config": config,
            "tokens_per_s": (n1 - n0) / seconds,
            "seconds": seconds,
            "timed_tokens": n1 - n0,
            "timed_steps": steps,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else float("nan"),
            "train_loss": output.training_loss,
            "params": sum(p.numel() for p in trainer.model.parameters()),
            # from one step end to the next on the GPU's clock: a slow outlier is a recompile or a new recording
            "step_ms": [round(a.elapsed_time(b), 1) for a, b in zip(step_events, step_events[1:])],
            "env": {name: os.environ.get(name) for name in env_names},  # a variant's settings, as this process saw them
        }
    result_path.write_text(json.dumps(result))


# Levers of ours that `PARAPHRX_BENCH_WITHOUT=name,...` (a variant's environment word) switches off in its process,
# so each one's gain is measured side by side: a change of paraphrx/fast_path.py's CHANGES left out, or (lm_head) the
# LM head's one-pass gradient replaced by TRL's kernel. The library itself has no such switches.
LEVERS = {
    "positions": "trained positions from the collator",
    "walks": "module walks listed once",
    "workers": "collation in a dataloader worker",
    "lm_head": None,
}


def switch_off_levers(names: list[str]) -> None:
    """positions: TRL's boolean-index LM head (host waits); lm_head: TRL's kernel with its backward recomputation;
    walks: Trainer's per-step module walks; workers: collation in the main process."""
    import paraphrx.fast_path as fast_path
    import paraphrx.lm_head

    unknown = sorted(set(names) - set(LEVERS))
    if unknown:
        raise SystemExit(f"PARAPHRX_BENCH_WITHOUT: unknown {unknown}; choose from {list(LEVERS)}")
    left_out = {LEVERS[name] for name in names}
    fast_path.CHANGES = tuple(change for change in fast_path.CHANGES if change.name not in left_out)
    if "lm_head" in names:

        class TrlHead:
            @staticmethod
            def apply(hidden, weight, targets, softcap):
                return paraphrx.lm_head.trl_log_probs(hidden, weight, None, targets, softcap)

        paraphrx.lm_head.LogProbsWithGradient = TrlHead


def _profile_callback(warmup: int, marks: dict):
    """torch.profiler over two timed steps: the kernel table, then where the GPU sat idle (the CPU gaps)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    class Profile(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup:
                marks["prof"] = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                marks["prof"].__enter__()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == warmup + 2:
                torch.cuda.synchronize()
                marks["prof"].__exit__(None, None, None)
                print(marks["prof"].key_averages().table(sort_by="cuda_time_total", row_limit=30), flush=True)
                with tempfile.NamedTemporaryFile(suffix=".json") as trace:
                    marks["prof"].export_chrome_trace(trace.name)
                    events = json.loads(Path(trace.name).read_text())
                    print_gpu_gaps(events, steps=2)
                    print_host_time(events, steps=2)
                    if os.environ.get("PARAPHRX_PROFILE_TRACE"):  # the chrome trace, gzipped, for a closer look
                        import gzip

                        Path(os.environ["PARAPHRX_PROFILE_TRACE"]).write_bytes(
                            gzip.compress(Path(trace.name).read_bytes())
                        )

    return Profile()


def print_gpu_gaps(trace: dict, steps: int, min_gap_us: float = 300.0, show: int = 25) -> None:
    """GPU busy time vs the profiled wall time, and the longest idle gaps with the host calls made during each."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    gpu = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
    )
    host = sorted(
        (e["ts"], e["dur"], e.get("cat"), e["name"])
        for e in events
        if e.get("cat") in ("cpu_op", "cuda_runtime", "user_annotation")
    )
    if not gpu:
        print("no GPU events in the trace", flush=True)
        return
    busy, gaps, (start, end) = 0.0, [], gpu[0]
    for s, e in gpu[1:]:
        if s > end:
            busy += end - start
            if s - end >= min_gap_us:
                gaps.append((s - end, end, s))
            start, end = s, e
        else:
            end = max(end, e)
    busy += end - start
    wall = gpu[-1][1] - min(h[0] for h in host) if host else gpu[-1][1] - gpu[0][0]
    idle = sum(g[0] for g in gaps)
    print(
        f"GPU busy {busy / steps / 1e3:.1f} ms/step of {wall / steps / 1e3:.1f} ms/step profiled; "
        f"{len(gaps)} gaps >= {min_gap_us / 1e3:.1f} ms sum to {idle / steps / 1e3:.1f} ms/step",
        flush=True,
    )
    for length, g0, g1 in sorted(gaps, reverse=True)[:show]:
        during = [h for h in host if g0 - 50 <= h[0] < g1]
        syncs = [
            h
            for h in host
            if h[2] == "cuda_runtime"
            and h[0] < g1
            and h[0] + h[1] > g0 - 50
            and ("Synchronize" in h[3] or "Memcpy" in h[3])
        ]
        names, seen = [], set()
        for h in during:
            if h[2] != "cuda_runtime" and h[3] not in seen:
                seen.add(h[3])
                names.append(h[3])
        print(
            f"  gap {length / 1e3:6.2f} ms at +{(g0 - gpu[0][0]) / 1e3:7.1f} ms | syncs: "
            f"{[f'{h[3]} {h[1] / 1e3:.2f}ms' for h in syncs][:3]} | host: {names[:8]}",
            flush=True,
        )


def print_host_time(trace: dict, steps: int, show: int = 25) -> None:
    """Where the host's time goes: the outermost profiled calls of every thread (the main loop, autograd's backward
    thread) summed by name, the time between them (plain Python: the Trainer, hooks, wrappers), kernel launches."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    host = sorted(
        ((e["ts"], e["dur"], e.get("tid"), e["name"]) for e in events if e.get("cat") in ("cpu_op", "user_annotation")),
        key=lambda h: (h[0], -h[1]),
    )
    if not host:
        print("no host events in the trace", flush=True)
        return
    outermost, open_until = [], {}
    for ts, dur, tid, name in host:
        if ts >= open_until.get(tid, float("-inf")):
            outermost.append((ts, dur, name))
            open_until[tid] = ts + dur
    totals: dict = {}
    for _, dur, name in outermost:
        total, calls = totals.get(name, (0.0, 0))
        totals[name] = (total + dur, calls + 1)
    covered, (start, end) = 0.0, (outermost[0][0], outermost[0][0])
    for ts, dur, _ in sorted(outermost):
        if ts > end:
            covered, start = covered + end - start, ts
        end = max(end, ts + dur)
    covered += end - start
    wall = max(ts + dur for ts, dur, *_ in host) - host[0][0]
    launches = [e["dur"] for e in events if e.get("cat") == "cuda_runtime" and "Launch" in e["name"]]
    print(
        f"host: {wall / steps / 1e3:.1f} ms/step profiled, {(wall - covered) / steps / 1e3:.1f} ms/step outside "
        f"any profiled call; {len(launches) / steps:.0f} kernel launches/step taking "
        f"{sum(launches) / steps / 1e3:.1f} ms/step",
        flush=True,
    )
    for name, (total, calls) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:show]:
        print(f"  {total / steps / 1e3:7.2f} ms/step {calls / steps:6.0f} calls/step  {name[:110]}", flush=True)


def _sync_debug_callback(warmup: int):
    """The last warm-up step under torch.cuda.set_sync_debug_mode: each distinct Python stack that made the host wait."""
    import collections
    import traceback
    import warnings

    import torch
    from transformers import TrainerCallback

    stacks: collections.Counter = collections.Counter()
    show_default = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            frames = [f for f in traceback.extract_stack()[:-1] if "warnings" not in f.filename]
            stacks[
                "\n".join(f"    {f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}" for f in frames[-7:])
            ] += 1
        else:
            show_default(message, category, filename, lineno, file, line)

    class SyncDebug(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup - 1:
                warnings.showwarning = record
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == warmup:  # global_step already counts it
                torch.cuda.set_sync_debug_mode("default")
                warnings.showwarning = show_default
                print(f"host-device syncs in one step: {sum(stacks.values())} from {len(stacks)} places", flush=True)
                for stack, n in stacks.most_common():
                    print(f"  x{n}\n{stack}", flush=True)

    return SyncDebug()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma list of: " + ", ".join(CONFIGS) + ", and --variant names"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="a variant of ours: extra recipe args and/or environment settings (UPPER_CASE=value, "
        "e.g. inductor's), e.g. ours_cpp='TORCHINDUCTOR_CPP_WRAPPER=1 --learning_rate 1e-4'; "
        "list NAME in --configs (repeatable)",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first (compile, allocator)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny Gemma-2 instead of gemma-2-2b's shapes")
    parser.add_argument("--model_dir", type=Path, default=None, help="reuse a saved random model folder")
    parser.add_argument("--json", type=Path, default=None, help="also write all results here")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per configuration before it is stopped")
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_result", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_recipe_args", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_env_names", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    on_gpu = args.device == "cuda"
    if any("=" not in v for v in args.variant):
        parser.error(f"--variant takes NAME='recipe args', got {[v for v in args.variant if '=' not in v]}")
    variants = dict(v.split("=", 1) for v in args.variant)

    if args._worker:
        run_worker(
            args._worker,
            args.model_dir,
            args.steps,
            args.warmup,
            on_gpu,
            args._result,
            args._recipe_args,
            tuple(filter(None, args._env_names.split(","))),
        )
        return
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS and c not in variants]
    if unknown:
        parser.error(f"--configs: unknown {unknown}; choose from {list(CONFIGS) + list(variants)}")

    import torch

    model_dir = args.model_dir or Path(tempfile.gettempdir()) / (
        "paraphrx-bench-tiny" if args.tiny else "paraphrx-bench-gemma2-2b"
    )
    build_model_dir(model_dir, args.tiny, args.device)
    matmul_tflops = measure_matmul_tflops(args.device)
    gpu = torch.cuda.get_device_name() if on_gpu else "cpu"
    print(f"device: {gpu}; bf16 matmul {matmul_tflops:.0f} TFLOP/s; torch {torch.__version__}", flush=True)

    results = []
    for config in args.configs.split(","):
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            cmd = [
                sys.executable,
                __file__,
                "--_worker",
                config,
                "--_result",
                tmp.name,
                "--model_dir",
                str(model_dir),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--device",
                args.device,
            ]
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            if config in variants:
                variant_env, recipe_args = split_variant(variants[config])
                cmd += ["--_recipe_args", shlex.join(recipe_args), "--_env_names", ",".join(variant_env)]
                env.update(variant_env)
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, env=env, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"[{config}] FAILED: stopped after {args.timeout:.0f} s", flush=True)
                continue
            if proc.returncode != 0:
                print(f"[{config}] FAILED with exit code {proc.returncode}", flush=True)
                continue
            r = json.loads(Path(tmp.name).read_text())
            r["wall_s"] = time.perf_counter() - t0
            results.append(r)
            print(
                f"[{config}] {r['tokens_per_s']:.0f} tokens/s, peak {r['peak_gib']:.1f} GiB, "
                f"loss {r['train_loss']:.4f}, process {r['wall_s']:.0f} s; step ms {r['step_ms']}",
                flush=True,
            )

    n_base = _param_count(model_dir)
    by_name = {r["config"]: r for r in results}
    width = max([6] + [len(r["config"]) for r in results])
    print(
        f"\n{'config':<{width}} {'tokens/s':>10} {'peak GiB':>9} {'MFU':>6}   (N = {n_base / 1e9:.2f}B, "
        f"16 examples/step)"
    )
    for r in results:
        mfu = 6 * n_base * r["tokens_per_s"] / (matmul_tflops * 1e12)
        r["mfu"] = mfu
        print(f"{r['config']:<{width}} {r['tokens_per_s']:>10.0f} {r['peak_gib']:>9.1f} {mfu:>6.1%}")
    pairs = [("ours", "seed"), ("ours", "trl"), ("trl", "seed")] + [(v, d) for v in variants for d in ("ours", "trl")]
    for num, den in pairs:
        if num in by_name and den in by_name:
            print(f"ratio {num}/{den}: {by_name[num]['tokens_per_s'] / by_name[den]['tokens_per_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"device": gpu, "matmul_tflops": matmul_tflops, "results": results}, indent=2))


def split_variant(spec: str) -> tuple[dict[str, str], list[str]]:
    """A --variant's words: UPPER_CASE=value ones are settings for its process's environment, the rest recipe args."""
    env, recipe_args = {}, []
    for word in shlex.split(spec):
        name, eq, value = word.partition("=")
        if eq and re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            env[name] = value
        else:
            recipe_args.append(word)
    return env, recipe_args


def _param_count(model_dir: Path) -> int:
    """Parameters of the base model from its config (embeddings tied), without loading it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    main()
