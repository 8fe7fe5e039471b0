"""How far the fixed evaluation subset's loss (`eval_subset_rows`) is from the whole validation split's, measured.

    python benchmarks/eval_subset_noise.py                                  # the tiny Gemma-2 on the shipped samples
    python benchmarks/eval_subset_noise.py --recipe recipes/bucket1-4.yaml --model_name_or_path google/gemma-2-2b-it \
        --dataset_name data/paraphrx-full --steps 400 --eval_every 20   # a real model and data, where you have them

Method: train one run of the recipe (evaluation switched off) and, every `--eval_every` steps and before the first,
score every row of the whole validation split of its buckets: each row's summed completion-token loss and token
count. The full split's loss at each point is their ratio over all rows; a subset's is the same ratio over its rows.
For each size, the subset the recipe would use (seed 42) and `--resamples` others (other seeds) are compared with
the full split at every point:
  offset        subset loss - full loss (a constant offset does not matter for early stopping or the best adapter)
  change error  (subset change - full change) between consecutive evaluations, beside the mean full change
  same sign     share of consecutive evaluations where subset and full split agree on better / worse
  same best     share of subsets that pick the evaluation with the lowest full loss; regret = how much higher the
                full loss of the evaluation they pick is
and, for reference, plain random samples of the same size (not stratified, not spread over prompts).

Without `--dataset_name` the shipped Alpaca and GSM8K samples are prepared with `--split` (default 40/60/0: the
validation side gets 7 of the 12 Alpaca prompts and 5 of the 8 GSM8K ones, ~1.8k rows of buckets 1-4). Without
`--model_name_or_path` the tiny Gemma-2 is first trained as a whole on the training rows (`--pretrain_steps`): a random
model scores every row at ~log(vocabulary), which would make any subset look exact. Other arguments are recipe
overrides (e.g. `--load_in_4bit false --dtype float32 --per_device_eval_batch_size 64`: faster on a CPU, and
numerics do not change which rows are sampled).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_train import NO_EVAL_NO_SAVE  # noqa: E402 (after the path above)


def per_row_losses(trainer) -> tuple[np.ndarray, np.ndarray]:
    """(summed completion-token loss, completion tokens) of every row of `trainer.eval_dataset`, in its order."""
    import torch
    import torch.nn.functional as F

    model = trainer.model
    was_training = model.training
    model.eval()
    sums, counts = [], []
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader():
            labels = batch["labels"].to(model.device)
            inputs = {k: batch[k].to(model.device) for k in ("input_ids", "attention_mask") if k in batch}
            logits = model(**inputs, use_cache=False).logits.float()[:, :-1]
            targets = labels[:, 1:]
            nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
            mask = targets != -100
            sums.append((nll * mask).sum(1).double().cpu())
            counts.append(mask.sum(1).cpu())
    model.train(was_training)
    return torch.cat(sums).numpy(), torch.cat(counts).numpy()


def build(recipe_args: list[str], with_validation: bool = True):
    """A trainer for the recipe, as train_sft.py builds it, with the whole validation split of its buckets as its
    evaluation set (evaluation itself switched off), and nothing saved. The plain path: per-row losses need padded
    batches, not the GPU path's one packed sequence."""
    from paraphrx.modeling import load_model_and_tokenizer
    from paraphrx.recipe_cli import parse_recipe
    from paraphrx.trainer_factory import build_trainer
    from paraphrx.training_data import load_training_splits

    script_args, training_args, model_args = parse_recipe(
        [
            *recipe_args,
            *NO_EVAL_NO_SAVE,
            "--eval_subset_rows",
            "null",
            "--report_to",
            "none",
            "--logging_steps",
            "1000000",
            "--disable_tqdm",
            "true",
            "--fast_path",
            "off",
        ]
    )
    train, _, validation, _ = load_training_splits(script_args, training_args.seed, with_eval=with_validation)
    model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    return build_trainer(model, tokenizer, training_args, model_args, train, validation)


def pretrain(recipe_args: list[str], steps: int, out: Path) -> Path:
    """Give the random tiny model some language first: all its weights trained on whole training rows (prompt and
    completion), so that its per-row losses differ as a language model's do, not all ~log(vocabulary)."""
    if (out / "config.json").exists():
        return out
    trainer = build(
        [
            *recipe_args,
            "--use_peft",
            "false",
            "--load_in_4bit",
            "false",
            "--completion_only_loss",
            "false",
            "--dataset_train_split",
            "bucket1_5",
            "--learning_rate",
            "3e-3",
            "--max_steps",
            str(steps),
            "--max_train_samples",
            "null",
            "--output_dir",
            str(out.parent / "pretrain"),
        ],
        with_validation=False,
    )
    trainer.train()
    trainer.save_model(str(out))
    return out


def train_and_score(recipe_args: list[str], steps: int, eval_every: int) -> tuple[list, np.ndarray, np.ndarray, list]:
    """Train the recipe for `steps` on all its training rows, scoring the whole validation split every `eval_every`
    steps and at step 0."""
    from transformers import TrainerCallback

    from paraphrx.eval_subset import IDENTITY_COLUMNS

    trainer = build([*recipe_args, "--max_steps", str(steps), "--max_train_samples", "null"])
    points, losses = [], []

    class Score(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.on_step_end(args, state, control)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % eval_every == 0 or state.global_step == steps:
                sums, counts = per_row_losses(trainer)
                points.append(state.global_step)
                losses.append(sums)
                self.counts = counts
                print(f"step {state.global_step}: whole split loss {sums.sum() / counts.sum():.4f}", flush=True)

    score = Score()
    trainer.add_callback(score)
    trainer.train()
    identity = trainer.eval_dataset.select_columns(list(IDENTITY_COLUMNS)).to_list()  # rows TRL kept, in order
    return points, np.stack(losses), score.counts, identity


def compare(losses: np.ndarray, counts: np.ndarray, subsets: list[list[int]]) -> dict:
    """Subset vs whole-split losses at every scored point (see the module docstring for each figure)."""
    full = losses.sum(1) / counts.sum()
    sub = np.stack([losses[:, idx].sum(1) / counts[idx].sum() for idx in subsets])
    offset = sub - full
    change_error = np.diff(sub, axis=1) - np.diff(full)
    picked = sub.argmin(1)
    return {
        "offset_mean_abs": float(np.abs(offset).mean()),
        "offset_p95_abs": float(np.quantile(np.abs(offset), 0.95)),
        "change_error_mean_abs": float(np.abs(change_error).mean()),
        "change_error_p95_abs": float(np.quantile(np.abs(change_error), 0.95)),
        "same_sign": float((np.sign(np.diff(sub, axis=1)) == np.sign(np.diff(full))).mean()),
        "same_best": float((picked == full.argmin()).mean()),
        "regret_mean": float((full[picked] - full.min()).mean()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "tiny" / "bucket1-4.yaml"))
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--eval_every", type=int, default=10)
    parser.add_argument("--sizes", default="16,32,64,128,256", help="subset sizes to compare")
    parser.add_argument("--resamples", type=int, default=200, help="other seeds' subsets per size")
    parser.add_argument("--split", default="40/60/0", help="prep --split of the shipped samples (no --dataset_name)")
    parser.add_argument(
        "--pretrain_steps",
        type=int,
        default=300,
        help="full training of the tiny model before the run (no --model_name_or_path)",
    )
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/paraphrx-eval-subset-noise"))
    parser.add_argument("--json", type=Path, default=None)
    args, recipe_overrides = parser.parse_known_args(argv)
    from paraphrx.eval_subset import subset_indices

    args.work_dir.mkdir(parents=True, exist_ok=True)
    overrides = [
        "--output_dir",
        str(args.work_dir / "run"),
        "--log_dir",
        str(args.work_dir / "logs"),
        *recipe_overrides,
    ]
    if "--dataset_name" not in recipe_overrides:
        data = args.work_dir / "data"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "prep",
                "--data_paths",
                str(REPO / "data" / "alpaca_gemma-2-2b-it.json"),
                str(REPO / "data" / "gsm8k_gemma-2-2b-it.json"),
                "--output_dir",
                str(data),
                "--split",
                args.split,
                "--log_dir",
                str(args.work_dir / "logs"),
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        overrides += ["--dataset_name", str(data)]
    if "--model_name_or_path" not in recipe_overrides:
        from paraphrx.tiny_gemma import save_tiny_gemma

        model = args.work_dir / "tiny-gemma2"
        if not (model / "config.json").exists():
            save_tiny_gemma(model)
        model = pretrain(
            [args.recipe, *overrides, "--model_name_or_path", str(model)],
            args.pretrain_steps,
            args.work_dir / f"tiny-gemma2-pretrained-{args.pretrain_steps}",
        )
        overrides += ["--model_name_or_path", str(model)]
    points, losses, counts, identity = train_and_score([args.recipe, *overrides], args.steps, args.eval_every)

    rng = np.random.default_rng(0)
    full = losses.sum(1) / counts.sum()
    result = {
        "recipe": args.recipe,
        "overrides": recipe_overrides,
        "points": points,
        "full_loss": full.tolist(),
        "rows": len(counts),
        "prompts": len({(r["source"], r["prompt_count"]) for r in identity}),
        "row_loss_std": float((losses / np.maximum(counts, 1)).std(1).mean()),
        "mean_abs_full_change": float(np.abs(np.diff(full)).mean()),
        "sizes": {},
    }
    print(
        f"\nwhole split: {result['rows']} rows of {result['prompts']} prompts; loss by step "
        + ", ".join(f"{p}: {v:.3f}" for p, v in zip(points, full))
    )
    print(
        f"mean |change| of the whole split's loss between evaluations: {result['mean_abs_full_change']:.4f}; "
        f"per-row loss std {result['row_loss_std']:.3f}"
    )
    print("\n| rows | subsets | offset mean / p95 | change error mean / p95 | same sign | same best | regret |")
    print("|---|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        if size >= len(counts):
            continue
        recipe_subset = subset_indices(identity, size, 42)[0]
        stratified = [recipe_subset] + [subset_indices(identity, size, seed)[0] for seed in range(1, args.resamples)]
        random = [rng.choice(len(counts), size, replace=False) for _ in range(args.resamples)]
        figures = {
            "recipe_seed": compare(losses, counts, [recipe_subset]),
            "stratified": compare(losses, counts, stratified),
            "random": compare(losses, counts, random),
        }
        result["sizes"][size] = figures
        for kind in ("recipe_seed", "stratified", "random"):
            f = figures[kind]
            print(
                f"| {size} | {kind} | {f['offset_mean_abs']:.4f} / {f['offset_p95_abs']:.4f} | "
                f"{f['change_error_mean_abs']:.4f} / {f['change_error_p95_abs']:.4f} | {f['same_sign']:.0%} | "
                f"{f['same_best']:.0%} | {f['regret_mean']:.4f} |",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
