"""A training run's wall time, phase by phase, side by side: `train_sft.py` on a shipped recipe, as a user runs it.

    python benchmarks/bench_run.py --before_tree /tmp/before --json /tmp/bench_run.json      # gemma-2-2b shapes, GPU
    python benchmarks/bench_run.py --tiny --device cpu --max_steps 6 --configs ours,trl      # smoke test (CPU)

Each configuration is one `train_sft.py` process on `recipes/bucket1-4.yaml` as shipped (recipes/tiny/ with --tiny),
overriding only --max_steps, --dataset_name, --model_name_or_path, --output_dir, --run_name and --log_dir, so the
recipe's own evaluation, checkpoint and early-stopping cadence runs:
  ours         this checkout's train_sft.py and recipe, with an empty compile cache (a cold start);
  ours_warm    the next recipe of `make train-all` (bucket1-5), finding the compile and datasets caches `ours` left:
               the second and later runs of `make train-all`;
  ours_resume  the same as `ours` resumed from its last checkpoint before its end (warm caches; `ours` then keeps its
               checkpoints: --keep_checkpoints true --save_total_limit 100), training the steps after it;
  trl          the same with TRL's best knobs instead of paraphrx's GPU path (bench_train.py's `trl`): --fast_path off,
               one padding-free batch of 16, flex attention, Liger kernels, no activation checkpointing, and the
               dataset tokenized on as many cores as the fast path uses (--dataset_num_proc);
  before       another checkout's train_sft.py and recipe (`--before_tree`, e.g. `git archive` of main), so the code
               before a change runs beside the code after it in one invocation.
The data has the shapes of the upstream held-out set: 100 Alpaca-like prompts x 268 paraphrases and 100 GSM8K-like
prompts x 11 (benchmarks/synth_data.py, scores skewed as upstream so bucket 5 is nearly empty), lengths calibrated to
a median prompt of 45 and completion of 180 tokens (DESIGN.md's, with gemma's tokenizer; the medians measured with
this model's offline tokenizer are printed), prepared with `python -m prep`. The model has gemma-2-2b-it's exact
shapes and random weights (bench_train.build_model_dir).

Every child runs under benchmarks/phase_timer.py, which times the library's Trainer methods (the code under test
has no benchmark switch) and writes a timeline; from it, wall time (launch to exit, measured here) splits into
  startup     launch -> end of the first optimizer step (imports, data, model load, compilation, the first step)
  training    the other optimizer steps
  evaluation  the evaluations of the recipe's schedule (eval_steps)
  final eval  the end-of-run evaluation on the whole validation split (checkouts that have one)
  saving      checkpoints and the final save
  other       the rest (loading the best checkpoint, run records, process exit)
with each one's share, evaluation rows/s and tokens/s beside training tokens/s, torch.compile's compiled frames
and recompilations per phase (and each recompilation after the first step, with its reason), peak GPU memory, and
start-up split into: launch to the model load (interpreter, imports, recipe, data), the model load, to the trainer,
building the trainer (of which SFTTrainer's tokenization), to training, and the first step (compilation), with
torch.compile's seconds until the first step's end split by dynamo's timers (tracing, backend, kernels, guards). Each
configuration gets an empty compile cache unless --warm_compile_cache, and an empty datasets cache (each one tokenizes
its rows, as a first run does); ours_warm and ours_resume use ours's caches.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONFIGS = ("ours", "ours_warm", "ours_resume", "trl", "before")
WARM = ("ours_warm", "ours_resume")  # they start with the compile and datasets caches `ours` left
# Start-up, launch -> end of the first optimizer step, split at phase_timer's marks (each part ends at its mark).
STARTUP_PARTS = (
    ("to_model_load", "model_load_start"),  # interpreter, imports, recipe, data, evaluation subset
    ("model_load", "model_load_end"),  # from_pretrained (4-bit quantization on load)
    ("to_trainer", "trainer_init_start"),  # the fast path's dequantization, the tokenizer
    ("trainer_init", "trainer_init_end"),  # SFTTrainer: tokenization (dataset_prep_s of it), PEFT, the fast path
    ("to_train", "train_begin"),  # callbacks, a resumed checkpoint's state
    ("first_step", "first_step_end"),  # compilation and the first optimizer step
)
PHASES = ("startup", "training", "evaluation", "final_eval", "saving", "other")
# The held-out shapes of the issue (100 Alpaca prompts x ~268 paraphrases + 100 GSM8K prompts x 11); --tiny: a toy.
DATA_SHAPES = {False: {"alpaca": (100, 268), "gsm8k": (100, 11)}, True: {"alpaca": (12, 20), "gsm8k": (8, 11)}}
LENGTHS = {False: (45, 180), True: (45, 40)}  # median prompt and completion tokens


def trl_overrides(on_gpu: bool, examples_per_step: int) -> list[str]:
    """bench_train.py's `trl` configuration as recipe overrides: TRL's knobs, not paraphrx's fast path (with the
    dataset tokenized on as many cores as the fast path would use)."""
    from paraphrx.fast_path import tokenize_processes  # here: the driver itself does not load the training stack

    processes = tokenize_processes()
    args = ["--dataset_num_proc", str(processes)] if processes else []
    args += [
        "--fast_path",
        "off",
        "--per_device_train_batch_size",
        str(examples_per_step),
        "--gradient_accumulation_steps",
        "1",
        "--padding_free",
        "true",
        "--gradient_checkpointing",
        "false",
        "--max_length",
        "None",
    ]  # TRL refuses max_length with padding-free batches
    if on_gpu:  # flex attention has no backward on the CPU, and Liger needs triton
        args += ["--attn_implementation", "flex_attention", "--use_liger_kernel", "true"]
    return args


def prepare_data(work: Path, tokenizer, tiny: bool) -> Path:
    """Synthetic seed-schema files at the held-out shapes, prepared with `python -m prep` (reused when unchanged)."""
    from benchmarks.synth_data import UPSTREAM_SCORES, calibrated_lengths, write_synth

    prompt_tokens, completion_tokens = LENGTHS[tiny]
    lengths = calibrated_lengths(tokenizer, prompt_tokens, completion_tokens)
    spec = {"shapes": DATA_SHAPES[tiny], "lengths": lengths, "scores": UPSTREAM_SCORES.tolist()}
    out, stamp = work / "data" / "paraphrx-bench", work / "data" / "spec.json"
    if out.is_dir() and stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(spec)):
        return out
    paths = []
    for seed, (source, (prompts, paraphrases)) in enumerate(DATA_SHAPES[tiny].items()):
        paths.append(
            write_synth(
                work / "data" / f"{source}_synth.json",
                prompts,
                paraphrases,
                seed=seed,
                score_p=UPSTREAM_SCORES,
                **lengths,
            )
        )
    prep = subprocess.run(
        [
            sys.executable,
            "-m",
            "prep",
            "--data_paths",
            *map(str, paths),
            "--output_dir",
            str(out),
            "--log_dir",
            str(work / "logs"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if prep.returncode != 0:
        raise SystemExit(f"python -m prep failed:\n{prep.stderr[-3000:]}")
    stamp.write_text(json.dumps(spec))
    return out


def token_medians(dataset: Path, tokenizer, split: str = "bucket1_4", sample: int = 2000) -> dict:
    """Median prompt and completion tokens of the prepared rows, as the model sees them (<bos> + prompt; completion
    + <eos>)."""
    import numpy as np

    from paraphrx.dataset_io import load_prepared

    rows = load_prepared(str(dataset), split)
    rows = rows.shuffle(seed=0).select(range(min(sample, len(rows))))
    prompt = [len(ids) for ids in tokenizer(list(rows["prompt"]))["input_ids"]]
    completion = [len(ids) + 1 for ids in tokenizer(list(rows["completion"]), add_special_tokens=False)["input_ids"]]
    return {"prompt": float(np.median(prompt)), "completion": float(np.median(completion))}


def newest_checkpoint_before_end(output: Path) -> Path | None:
    """The checkpoint with the highest step below the run's last one (a resumed run then trains the steps after it)."""
    steps = sorted(int(p.name.split("-")[1]) for p in output.glob("checkpoint-*") if p.name.split("-")[1].isdigit())
    return output / f"checkpoint-{steps[-2]}" if len(steps) >= 2 else None


def command(config: str, tree: Path, recipe: str, args, work: Path, dataset: Path, model_dir: Path) -> list[str]:
    out = work / "runs" / config
    steps = {"before": args.before_max_steps, "trl": args.trl_max_steps}.get(config) or args.max_steps
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "phase_timer.py"),
        "--timeline",
        str(out / "timeline.json"),
        "--",
        str(tree / "train_sft.py"),
        str(tree / (recipe.replace("bucket1-4", "bucket1-5") if config == "ours_warm" else recipe)),
        "--max_steps",
        str(steps),
        "--dataset_name",
        str(dataset),
        "--model_name_or_path",
        str(model_dir),
        "--output_dir",
        str(out / "output"),
        "--run_name",
        f"bench-{config}",
        "--log_dir",
        str(out / "logs"),
    ]
    if config == "trl":  # the same examples per optimizer step as the recipe's micro-batches x accumulation
        values = yaml.safe_load((REPO / recipe).read_text())
        examples = values["per_device_train_batch_size"] * values.get("gradient_accumulation_steps", 1)
        cmd += trl_overrides(args.device == "cuda", examples)
    if config == "ours" and "ours_resume" in args.configs.split(","):
        cmd += ["--keep_checkpoints", "true", "--save_total_limit", "100"]  # ours_resume resumes from one of them
    if config == "ours_resume":
        checkpoint = newest_checkpoint_before_end(work / "runs" / "ours" / "output")
        if checkpoint is None:
            return []
        cmd += ["--resume_from_checkpoint", str(checkpoint)]
    return cmd


def run_config(config: str, cmd: list[str], work: Path, args) -> dict | None:
    """One child process; its timeline plus the wall time measured here, or None when it failed."""
    out = work / "runs" / config
    if not cmd:
        print(f"[{config}] skipped: it needs `ours` first (with a checkpoint before its last step)", flush=True)
        return None
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cache = work / "compile-cache" / ("ours" if config in WARM else config)
    if not (args.warm_compile_cache or config in WARM):
        shutil.rmtree(cache, ignore_errors=True)
    # Its own datasets cache too (a configuration run after another would find the rows already tokenized), but for
    # the runs that follow `ours` as make train-all's later runs do
    datasets_cache = (work / "runs" / "ours" if config in WARM else out) / "datasets-cache"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(datasets_cache),
        "TORCHINDUCTOR_CACHE_DIR": str(cache),
        "TRITON_CACHE_DIR": str(cache / "triton"),
    }
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    print(f"[{config}] {' '.join(cmd[4:])}", flush=True)
    with open(out / "process.log", "w") as log:
        launched = time.time()
        child = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = child.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            code = "timeout"
            child.send_signal(signal.SIGUSR1)  # phase_timer writes every thread's stack to the log: where it was
            time.sleep(3)
        finally:  # stopped at its timeout, or this script interrupted: the run does not outlive it
            if child.poll() is None:
                child.kill()
                child.wait()
        ended = time.time()
    timeline_path = out / "timeline.json"
    if code != 0 or not timeline_path.is_file():
        tail = (out / "process.log").read_text(errors="replace")[-3000:]
        print(f"[{config}] FAILED ({code}); the end of {out / 'process.log'}:\n{tail}", flush=True)
        return None
    timeline = json.loads(timeline_path.read_text())
    return summarize(config, timeline, launched, ended)


def summarize(config: str, timeline: dict, launched: float, ended: float) -> dict:
    """Phase seconds (they add up to the wall time), throughputs, compilations per phase."""
    intervals = timeline["intervals"]
    first, last = timeline["first_step_end"], timeline["last_step_end"]
    if first is None:  # no optimizer step: the whole run is start-up
        first = last = ended

    def phase_of(interval: dict) -> str:
        if interval["kind"] == "save":
            return "saving"
        return "final_eval" if interval.get("prefix") == "eval_full" else "evaluation"

    def within(lo: float, hi: float):
        return [i for i in intervals if lo <= i["start"] and i["end"] <= hi]

    def seconds(items) -> float:
        return sum(i["end"] - i["start"] for i in items)

    phases = dict.fromkeys(PHASES, 0.0)
    phases["startup"] = first - launched - seconds(within(launched, first))
    phases["training"] = last - first - seconds(within(first, last))
    for interval in intervals:
        phases[phase_of(interval)] += interval["end"] - interval["start"]
    wall = ended - launched
    phases["other"] = wall - sum(phases[p] for p in PHASES if p != "other")

    compiles = dict.fromkeys(PHASES, 0)
    marks = timeline["compiles_at"]
    at_first, at_last = marks.get("first_step_end", 0), marks.get("last_step_end", marks.get("first_step_end", 0))
    delta = {id(i): i["compiles_after"] - i["compiles_before"] for i in intervals}
    compiles["startup"] = at_first - sum(delta[id(i)] for i in within(launched, first))
    compiles["training"] = at_last - at_first - sum(delta[id(i)] for i in within(first, last))
    for interval in intervals:
        compiles[phase_of(interval)] += delta[id(interval)]
    compiles["other"] = timeline["compiles_at_exit"] - sum(compiles[p] for p in PHASES if p != "other")

    def phase_at(moment: float) -> str:
        inside = [i for i in intervals if i["start"] <= moment <= i["end"]]
        if inside:
            return phase_of(inside[0])
        return "startup" if moment <= first else "training" if moment <= last else "other"

    recompiles = dict.fromkeys(PHASES, 0)
    for event in timeline["recompiles"]:
        recompiles[phase_at(event["time"])] += 1

    after_first = [e for e in timeline["recompiles"] if e["time"] > first]
    marks = {**timeline.get("marks", {}), "first_step_end": timeline["first_step_end"]}
    startup, previous = {}, launched
    for part, mark in STARTUP_PARTS:
        at = marks.get(mark)
        startup[part] = None if at is None or previous is None else at - previous
        previous = at if at is not None else None
    startup["dataset_prep"] = timeline.get("dataset_prep_s")

    def rate(kind: str, field: str) -> float | None:
        done = [i for i in intervals if i["kind"] == "evaluate" and phase_of(i) == kind and i.get(field)]
        return sum(i[field] for i in done) / seconds(done) if done and seconds(done) > 0 else None

    evals = [i for i in intervals if i["kind"] == "evaluate" and phase_of(i) == "evaluation"]
    final = [i for i in intervals if phase_of(i) == "final_eval"]
    steady_tokens = timeline["train_tokens"] - timeline["first_step_tokens"]
    return {
        "config": config,
        "wall_s": wall,
        "phases_s": phases,
        "shares": {p: phases[p] / wall for p in PHASES},
        "steps": timeline["steps"],
        "steps_run": timeline.get("steps_run", timeline["steps"]),  # a resumed run starts past step 0
        "max_steps": timeline["max_steps"],
        "evaluations": len(evals),
        "eval_rows": [i.get("rows") for i in evals],
        "eval_s": [i["end"] - i["start"] for i in evals],  # the first one compiles the forward-only graph
        "eval_rows_per_s": rate("evaluation", "rows"),
        "eval_tokens_per_s": rate("evaluation", "tokens"),
        "eval_losses": [i.get("loss") for i in evals],
        "final_eval_rows": final[0].get("rows") if final else None,
        "final_eval_tokens": final[0].get("tokens") if final else None,
        "final_eval_loss": final[0].get("loss") if final else None,
        "final_eval_tokens_per_s": rate("final_eval", "tokens"),
        "train_tokens_per_s": steady_tokens / phases["training"] if phases["training"] > 0 else None,
        "saves": sum(i["kind"] == "save" for i in intervals),
        "compiled_frames": compiles,
        "recompiles": recompiles,
        "recompile_reasons": timeline["recompiles"][:20],
        "recompiles_after_first_step": len(after_first),
        "recompile_reasons_after_first_step": sorted({e["reason"] for e in after_first})[:10],
        "startup_s": startup,
        "compile_s_at_first_step": timeline.get("compile_s_at_first_step") or {},
        "peak_gpu_gib": timeline["peak_gpu_gib"],
        "tree": timeline["tree"],
        "paraphrx_imported_from": timeline["paraphrx_imported_from"],
    }


def split_sizes(dataset: Path) -> dict[str, dict[str, int]]:
    """Per recipe of `make train-all` (bucket spec): training rows, and validation rows of its buckets."""
    from collections import Counter

    from paraphrx.buckets import DEFAULT_SPECS, parse_bucket_spec, split_name
    from paraphrx.dataset_io import load_prepared

    by_bucket = Counter(load_prepared(str(dataset), "validation")["bucket"])
    sizes = {}
    for spec in DEFAULT_SPECS:
        buckets = parse_bucket_spec(spec)
        train = len(load_prepared(str(dataset), split_name(buckets)))
        sizes[spec] = {"train": train, "validation": sum(by_bucket[b] for b in buckets)}
    return sizes


def project_train_all(result: dict, later_startup_s: float, sizes: dict, scale: float, recipe: dict) -> dict:
    """`make train-all`'s five runs on `scale` times the benchmark's data, from one configuration's measured costs:
    start-up (`later_startup_s` for the runs after the first), seconds per optimizer step, per scheduled evaluation
    (the fixed subset: the same at any data size; the first one, which compiles, once and the median of the others
    for the rest), per save, the rest of a run, and the end-of-run evaluation at its measured tokens/s. Every run
    trains all its epochs (early stopping would end some sooner)."""
    phases = result["phases_s"]
    step_s = phases["training"] / max(result["steps_run"] - 1, 1)
    each = result.get("eval_s") or []
    first_eval_s = later_eval_s = phases["evaluation"] / max(result["evaluations"], 1)
    if len(each) >= 2:
        first_eval_s, later_eval_s = each[0], statistics.median(each[1:])
    save_s = phases["saving"] / max(result["saves"], 1)
    final_rows, final_rate = result["final_eval_rows"], result["final_eval_tokens_per_s"]
    final_tokens_per_row = result.get("final_eval_tokens", 0) / final_rows if final_rows else 0.0
    examples = recipe["per_device_train_batch_size"] * recipe.get("gradient_accumulation_steps", 1)
    runs = {}
    for index, (spec, size) in enumerate(sizes.items()):
        steps = math.ceil(recipe.get("num_train_epochs", 3) * size["train"] * scale / examples)
        evaluations, saves = steps // recipe["eval_steps"], steps // recipe["save_steps"] + 1
        final = size["validation"] * scale * final_tokens_per_row / final_rate if final_rate else 0.0
        seconds = {
            "startup": phases["startup"] if index == 0 else later_startup_s,
            "training": steps * step_s,
            "evaluation": (first_eval_s + (evaluations - 1) * later_eval_s) if evaluations else 0.0,
            "saving": saves * save_s,
            "final_eval": final,
            "other": phases["other"],
        }
        runs[spec] = {"steps": steps, "seconds": seconds, "total_s": sum(seconds.values())}
    return {"runs": runs, "total_s": sum(run["total_s"] for run in runs.values())}


def report_projection(results: list[dict], sizes: dict, scale: float, recipe: dict) -> None:
    by_name = {r["config"]: r for r in results}
    for name in ("ours", "trl"):
        if name not in by_name:
            continue
        warm = by_name.get("ours_warm") if name == "ours" else None
        later = (warm or by_name[name])["phases_s"]["startup"]
        projection = project_train_all(by_name[name], later, sizes, scale, recipe)
        by_name[name]["projection"] = projection
        print(
            f"\n[{name}] projected `make train-all` on {scale:g}x this data, {recipe.get('num_train_epochs', 3)} "
            "epochs each, "
            f"no early stop (start-up after the first run: {'ours_warm' if warm else 'as measured'}):"
        )
        print("| recipe | steps | start-up | training | evaluation | saving | final eval | other | total |")
        print("|---|---|---|---|---|---|---|---|---|")
        for spec, run in projection["runs"].items():
            cells = " | ".join(
                f"{run['seconds'][p]:,.0f} s"
                for p in ("startup", "training", "evaluation", "saving", "final_eval", "other")
            )
            print(f"| bucket{spec} | {run['steps']:,} | {cells} | {run['total_s'] / 60:,.1f} min |")
        print(f"[{name}] all five: {projection['total_s'] / 3600:.2f} h")


def _num(value, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def report(results: list[dict]) -> None:
    print("\n| start-up part | " + " | ".join(r["config"] for r in results) + " |")
    print("|---|" + "---|" * len(results))
    parts = [name for name, _ in STARTUP_PARTS]
    for part in parts[: parts.index("trainer_init") + 1] + ["dataset_prep"] + parts[parts.index("trainer_init") + 1 :]:
        label = "  of which tokenization" if part == "dataset_prep" else part
        print(f"| {label} | " + " | ".join(_num(r["startup_s"].get(part), ".1f") for r in results) + " |")
    print("| launch -> first step end | " + " | ".join(f"{r['phases_s']['startup']:.1f}" for r in results) + " |")
    for timer in ("total", "tracing", "backend", "kernels", "guards"):
        label = "torch.compile until then" if timer == "total" else f"  of which {timer}"
        print(
            f"| {label} | " + " | ".join(_num(r["compile_s_at_first_step"].get(timer), ".1f") for r in results) + " |"
        )
    print("\n| phase | " + " | ".join(r["config"] for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for phase in PHASES:
        print(
            f"| {phase} | "
            + " | ".join(f"{r['phases_s'][phase]:.1f} s ({r['shares'][phase]:.1%})" for r in results)
            + " |"
        )
    print("| wall | " + " | ".join(f"{r['wall_s']:.1f} s" for r in results) + " |")
    for r in results:
        evaluated = sorted({n for n in r["eval_rows"] if n is not None})
        ratio = (
            r["eval_tokens_per_s"] / r["train_tokens_per_s"]
            if r["eval_tokens_per_s"] and r["train_tokens_per_s"]
            else None
        )
        print(
            f"\n[{r['config']}] {r['steps_run']} steps (to step {r['steps']}), {r['evaluations']} evaluations of "
            f"{evaluated} rows, "
            f"{r['saves']} saves; final eval {_num(r['final_eval_rows'])} rows; "
            f"peak {_num(r['peak_gpu_gib'], '.1f')} GiB"
        )
        print(
            f"[{r['config']}] evaluation {_num(r['eval_rows_per_s'], ',.1f')} rows/s, "
            f"{_num(r['eval_tokens_per_s'])} tokens/s; final eval {_num(r['final_eval_tokens_per_s'])} tokens/s; "
            f"training {_num(r['train_tokens_per_s'])} tokens/s; evaluation/training tokens/s {_num(ratio, '.2f')}"
        )
        print(f"[{r['config']}] compiled frames by phase {r['compiled_frames']}; recompilations {r['recompiles']}")
        print(
            f"[{r['config']}] recompilations after the first step: {r['recompiles_after_first_step']}"
            + "".join(f"\n    {reason}" for reason in r["recompile_reasons_after_first_step"])
        )
        print(
            f"[{r['config']}] eval losses {[round(x, 4) for x in r['eval_losses'] if x is not None]}, "
            f"final eval loss {_num(r['final_eval_loss'], '.4f')}; code from {r['paraphrx_imported_from']}"
        )
    steady = {
        r["config"]: (r["phases_s"]["training"] + r["phases_s"]["evaluation"] + r["phases_s"]["saving"])
        / max(r["steps_run"] - 1, 1)
        * 20
        for r in results
    }
    print(
        "\nsteady state, seconds per 20 steps (training + evaluation + saving): "
        + ", ".join(f"{name} {s:.1f}" for name, s in steady.items())
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="ours,trl,before", help="comma list of: " + ", ".join(CONFIGS))
    parser.add_argument(
        "--before_tree",
        type=Path,
        default=None,
        help="another checkout of this repository (needed for `before`): e.g. "
        "mkdir /tmp/before && git archive b1f584e | tar -x -C /tmp/before",
    )
    parser.add_argument("--max_steps", type=int, default=80)
    parser.add_argument("--before_max_steps", type=int, default=None, help="steps for `before` (default --max_steps)")
    parser.add_argument("--trl_max_steps", type=int, default=None, help="steps for `trl` (default --max_steps)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="the tiny Gemma-2 and recipes/tiny/ (smoke test)")
    parser.add_argument("--work_dir", type=Path, default=None, help="model, data, runs (default: under /tmp)")
    parser.add_argument("--model_dir", type=Path, default=None, help="reuse a saved random model folder")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per configuration before it is stopped")
    parser.add_argument(
        "--warm_compile_cache",
        action="store_true",
        help="keep each configuration's torch.compile cache from an earlier invocation",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--project_scale",
        type=float,
        default=5.0,
        help="project `make train-all` on this many times the benchmark's data (5: the full upstream size, ~500 "
        "Alpaca prompts where the benchmark has 100)",
    )
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {unknown}; choose from {list(CONFIGS)}")
    warm = [c for c in configs if c in WARM]
    if warm and ("ours" not in configs or configs.index("ours") > configs.index(warm[0])):
        parser.error(f"--configs: {', '.join(WARM)} run after `ours` (they use its compile cache and checkpoints)")
    if "before" in configs and not (args.before_tree and (args.before_tree / "train_sft.py").is_file()):
        parser.error(f"--before_tree: `before` needs another checkout with a train_sft.py, got {args.before_tree}")

    from transformers import AutoTokenizer

    from benchmarks.bench_train import build_model_dir

    work = args.work_dir or Path("/tmp") / ("paraphrx-bench-run-tiny" if args.tiny else "paraphrx-bench-run")
    work.mkdir(parents=True, exist_ok=True)
    model_dir = build_model_dir(args.model_dir or work / "model", args.tiny, args.device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = prepare_data(work, tokenizer, args.tiny)
    medians = token_medians(dataset, tokenizer)
    recipe = "recipes/tiny/bucket1-4.yaml" if args.tiny else "recipes/bucket1-4.yaml"
    import torch

    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"device: {device}; torch {torch.__version__}; {platform.node()}", flush=True)
    print(
        f"data: {dataset} ({DATA_SHAPES[args.tiny]}); median prompt {medians['prompt']:.0f} and completion "
        f"{medians['completion']:.0f} tokens with this model's tokenizer (target {LENGTHS[args.tiny]})",
        flush=True,
    )

    results = []
    for config in configs:
        tree = args.before_tree.resolve() if config == "before" else REPO
        result = run_config(config, command(config, tree, recipe, args, work, dataset, model_dir), work, args)
        if result is not None:
            results.append(result)
            print(
                f"[{config}] {result['wall_s']:.1f} s: "
                + ", ".join(f"{p} {result['phases_s'][p]:.1f}" for p in PHASES),
                flush=True,
            )
        if args.json:  # after every configuration: a run stopped later keeps what finished
            args.json.write_text(
                json.dumps(
                    {
                        "device": device,
                        "torch": torch.__version__,
                        "recipe": recipe,
                        "data": {"shapes": DATA_SHAPES[args.tiny], "token_medians": medians},
                        "argv": sys.argv[1:] if argv is None else argv,
                        "results": results,
                    },
                    indent=2,
                )
            )
    if results:
        report(results)
        recipe_values = yaml.safe_load((REPO / recipe).read_text())
        report_projection(results, split_sizes(dataset), args.project_scale, recipe_values)
        if args.json:  # with the projections
            saved = json.loads(args.json.read_text())
            args.json.write_text(json.dumps({**saved, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
