"""Several GPUs, side by side in one run: a bucket recipe under DDP and FSDP-QLoRA on 1, 2 and N GPUs.

    python benchmarks/bench_multi_gpu.py                       # every GPU here: gemma-2-2b-it's shapes, random weights
    python benchmarks/bench_multi_gpu.py --gpus 1,2,8 --modes ddp,fsdp --steps 10 --warmup 3
    python benchmarks/bench_multi_gpu.py --device cpu --tiny --gpus 1,2 --modes ddp --steps 3 --warmup 1 \
        --global_batch 4 --per_device 4                        # CPU smoke test: gloo, 1 vs 2 processes

Each configuration is `accelerate launch --config_file accelerate_configs/<single_gpu|multi_gpu|fsdp_qlora>.yaml
--num_processes n train_sft.py <recipe>` (this script stands in for train_sft.py only to time the steps), with the
same global batch (`--global_batch` examples per optimizer step = per-device batch x accumulation x processes), the
same pre-tokenized examples in the same order (Alpaca-like lengths, from bench_train.py) and LoRA dropout 0, so the
per-step losses must agree across GPU counts up to bf16 noise. DDP runs set `--ddp_find_unused_parameters false`
(every LoRA weight is used; Trainer would otherwise make DDP search for unused ones every step). FSDP runs store the NF4 weights in bf16
(`--bnb_4bit_quant_storage bfloat16`) and use reentrant checkpointing, as PEFT's FSDP-QLoRA example does.
Throughput = real (non-pad) tokens of all ranks over the timed optimizer steps (wall clock from the end of the
last warm-up step); scaling efficiency = tokens/s on n GPUs / (n x tokens/s on 1 GPU) within one mode.
Every child gets NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1 (NVLink multicast
off, as the device README asks).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: import train_sft and benchmarks.* as the tests do

from benchmarks.bench_train import NO_EVAL_NO_SAVE  # noqa: E402 (after the path above)

MODES = ("ddp", "fsdp")
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# A PeftModel is not a PreTrainedModel, so Trainer asks DDP to find unused parameters: an extra autograd traversal
# every step, though every LoRA weight is used. Off, as a multi-GPU recipe should set it.
DDP_OVERRIDES = ["--ddp_find_unused_parameters", "false"]
FSDP_OVERRIDES = ["--bnb_4bit_quant_storage", "bfloat16", "--gradient_checkpointing_kwargs", '{"use_reentrant": true}']


# ---------------------------------------------------------------------------------------------------------------
# Worker: runs inside `accelerate launch`, one process per rank.


def run_worker(result_path: Path, recipe_argv: list[str]) -> None:
    """train_sft.main on the recipe, with a callback that timestamps every optimizer step; rank 0 writes the result."""
    import torch
    from accelerate import PartialState
    from transformers import TrainerCallback

    import train_sft
    from paraphrx.recipe_cli import parse_recipe_or_exit

    steps: dict[int, dict] = {}

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            steps.setdefault(state.global_step, {})["time"] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                steps.setdefault(state.global_step, {}).update(
                    loss=logs["loss"], grad_norm=logs.get("grad_norm"), num_tokens=logs.get("num_tokens")
                )

    build_trainer = train_sft.build_trainer

    def build_timed_trainer(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        trainer.add_callback(StepClock())
        return trainer

    train_sft.build_trainer = build_timed_trainer
    recipe = parse_recipe_or_exit(recipe_argv)  # its TrainingArguments set up the distributed state
    state = PartialState()
    world_size = state.num_processes  # read before train_sft.main tears the process group down
    train_sft.main(*recipe)
    if state.is_main_process:
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
        result = {
            "world_size": world_size,
            "peak_gib": peak,
            "steps": [{"step": s, **v} for s, v in sorted(steps.items())],
        }
        result_path.write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------------------
# Driver.


def write_pretokenized_dataset(folder: Path, rows: list[dict], split: str) -> Path:
    """A prepared-dataset folder (card + `data/<split>-*.parquet`) that load_prepared reads; SFTTrainer takes the
    `input_ids` / `completion_mask` columns as already tokenized."""
    from datasets import Dataset

    (folder / "data").mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    (folder / "README.md").write_text(f"Synthetic pre-tokenized rows for bench_multi_gpu.py (split {split}).\n")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(mode: str, processes: int, on_gpu: bool) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--main_process_port",
        str(free_port()),
    ]
    if on_gpu:
        config = "fsdp_qlora" if mode == "fsdp" else ("single_gpu" if processes == 1 else "multi_gpu")
        return [*cmd, "--config_file", str(REPO / "accelerate_configs" / f"{config}.yaml")]
    # CPU: `--cpu` would start ONE process (accelerate runs multi-CPU only through mpirun); the torchrun launcher
    # plus the recipe's `use_cpu: true` gives one gloo process per rank.
    return [*cmd, "--mixed_precision", "no", "--dynamo_backend", "no", *(["--multi_gpu"] if processes > 1 else [])]


def batch_split(global_batch: int, per_device: int, processes: int) -> tuple[int, int]:
    """(per-device batch, accumulation steps) giving `global_batch` examples per optimizer step on `processes`."""
    if global_batch % processes:
        raise SystemExit(f"error: --global_batch {global_batch} is not divisible by {processes} processes")
    per_rank = global_batch // processes
    micro = min(per_device, per_rank)
    while per_rank % micro:
        micro -= 1
    return micro, per_rank // micro


def run_config(mode, processes, args, model_dir, data_dir, workdir) -> dict | None:
    micro, accumulation = batch_split(args.global_batch, args.per_device, processes)
    name = f"{mode}-{processes}"
    result = workdir / f"{name}.json"
    recipe = [
        args.recipe,
        "--model_name_or_path",
        str(model_dir),
        "--dataset_name",
        str(data_dir),
        "--output_dir",
        str(workdir / name),
        "--log_dir",
        str(workdir / "logs"),
        "--run_name",
        f"bench-{name}",
        "--overwrite_output_dir",
        "true",
        "--max_length",
        "1024",
        "--max_steps",
        str(args.steps + args.warmup),
        "--warmup_steps",
        "1",
        "--per_device_train_batch_size",
        str(micro),
        "--gradient_accumulation_steps",
        str(accumulation),
        "--lora_dropout",
        "0",
        *NO_EVAL_NO_SAVE,
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        *(FSDP_OVERRIDES if mode == "fsdp" else DDP_OVERRIDES),
    ]
    cmd = [*launcher(mode, processes, args.device == "cuda"), __file__, "--_worker", str(result), *recipe]
    env = {**os.environ, **NO_MULTICAST, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    if args.device == "cpu":
        env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # one core per rank: comparable per-process work
    print(f"[{name}] {processes} x micro-batch {micro} x accumulation {accumulation} = {args.global_batch}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    if proc.returncode != 0 or not result.exists():
        print(f"[{name}] FAILED with exit code {proc.returncode}", flush=True)
        return None
    r = json.loads(result.read_text())
    if r["world_size"] != processes:
        print(f"[{name}] FAILED: ran {r['world_size']} processes, not {processes}", flush=True)
        return None
    by_step = {s["step"]: s for s in r["steps"]}
    first, last = by_step[args.warmup], by_step[args.warmup + args.steps]
    r.update(
        mode=mode,
        processes=processes,
        micro=micro,
        accumulation=accumulation,
        tokens_per_s=(last["num_tokens"] - first["num_tokens"]) / (last["time"] - first["time"]),
        losses=[by_step[s]["loss"] for s in sorted(by_step)],
        process_s=time.perf_counter() - t0,
    )
    print(
        f"[{name}] {r['tokens_per_s']:.0f} tokens/s, peak {r['peak_gib']:.1f} GiB (rank 0), "
        f"process {r['process_s']:.0f} s",
        flush=True,
    )
    return r


def report(results: list[dict]) -> None:
    print(f"\n{'mode':<5} {'procs':>5} {'micro x acc':>11} {'tokens/s':>10} {'scaling eff':>11} {'peak GiB':>9}")
    base = {r["mode"]: r for r in results if r["processes"] == 1}
    for r in results:
        one = base.get(r["mode"])
        r["scaling_efficiency"] = r["tokens_per_s"] / (r["processes"] * one["tokens_per_s"]) if one else None
        eff = f"{r['scaling_efficiency']:.1%}" if one else "n/a"
        print(
            f"{r['mode']:<5} {r['processes']:>5} {r['micro']:>5} x {r['accumulation']:<3} "
            f"{r['tokens_per_s']:>10.0f} {eff:>11} {r['peak_gib']:>9.1f}"
        )
    for r in results:
        if r["processes"] > 1 and r["mode"] in base:
            print(
                f"ratio {r['mode']} {r['processes']}/1 procs: {r['tokens_per_s'] / base[r['mode']]['tokens_per_s']:.2f}x"
            )

    reference = base.get("ddp") or (results[0] if results else None)
    if reference is None:
        return
    names = [f"{r['mode']}@{r['processes']}" for r in results]
    print("\nper-step loss (same examples, same global batch)\nstep " + " ".join(f"{n:>10}" for n in names))
    for i in range(len(reference["losses"])):
        print(f"{i + 1:>4} " + " ".join(f"{r['losses'][i]:>10.4f}" for r in results))
    for r, n in zip(results, names):
        if r is not reference:
            worst = max(abs(a - b) for a, b in zip(r["losses"], reference["losses"]))
            print(f"max |loss - {reference['mode']}@1| for {n}: {worst:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", default=None, help="comma list of process counts (default: 1,2,all GPUs here)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of: " + ", ".join(MODES))
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    parser.add_argument("--global_batch", type=int, default=16, help="examples per optimizer step (the seed's 16)")
    parser.add_argument("--per_device", type=int, default=4, help="largest micro-batch per process")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny Gemma-2 instead of gemma-2-2b's shapes")
    parser.add_argument("--recipe", default=None, help="default: recipes/bucket1-4.yaml (--tiny: recipes/tiny/...)")
    parser.add_argument("--model_dir", type=Path, default=None, help="reuse a saved random model folder")
    parser.add_argument("--json", type=Path, default=None, help="also write all results here")
    parser.add_argument("--_worker", type=Path, default=None, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args._worker:
        run_worker(args._worker, rest)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    import torch

    from benchmarks.bench_train import build_model_dir, synthetic_examples

    on_gpu = args.device == "cuda"
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no GPU is visible (use --device cpu --tiny for the smoke test)")
    available = torch.cuda.device_count() if on_gpu else os.cpu_count()
    counts = sorted({int(n) for n in args.gpus.split(",")} if args.gpus else {1, min(2, available), available})
    modes = args.modes.split(",")
    if "fsdp" in modes and not on_gpu:
        print("fsdp: skipped on the CPU (FSDP needs GPUs)", flush=True)
        modes.remove("fsdp")
    args.recipe = args.recipe or str(REPO / "recipes" / ("tiny" if args.tiny else "") / "bucket1-4.yaml")

    model_dir = args.model_dir or Path(tempfile.gettempdir()) / (
        "paraphrx-bench-tiny" if args.tiny else "paraphrx-bench-gemma2-2b"
    )
    build_model_dir(model_dir, args.tiny, args.device)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    device = torch.cuda.get_device_name() if on_gpu else "cpu"
    print(f"device: {available} x {device}; torch {torch.__version__}; modes {modes}; processes {counts}", flush=True)

    results = []
    with tempfile.TemporaryDirectory(prefix="paraphrx-bench-multi-") as tmp:
        workdir = Path(tmp)
        split = "bucket1_4"
        rows = synthetic_examples(args.global_batch * (args.steps + args.warmup), vocab)
        data_dir = write_pretokenized_dataset(workdir / "data", rows, split)
        for mode in modes:
            for n in counts:
                r = run_config(mode, n, args, model_dir, data_dir, workdir)
                if r:
                    results.append(r)
    report(results)
    if args.json:
        args.json.write_text(json.dumps({"device": device, "results": results}, indent=2))


if __name__ == "__main__":
    main()
