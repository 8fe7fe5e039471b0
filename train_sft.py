"""Supervised fine-tuning of gemma-2-2b-it on paraphrase buckets: TRL SFTTrainer, completion-only loss, QLoRA.

    accelerate launch train_sft.py recipes/bucket1-4.yaml [--any_key value ...]
    python train_sft.py --config recipes/tiny/bucket1.yaml --max_steps 5

One recipe (a flat YAML of TRL's ScriptArguments / SFTConfig / ModelConfig fields plus paraphrx's few) describes a
run; it writes the adapter and its records to `output_dir` (outputs/<run_name>) and logs to logs/<run_name>_*.log.
"""

# ruff: noqa: E402 - the Ctrl-C hook goes in before the heavy imports
import sys
from contextlib import ExitStack

from paraphrx.errors import one_line_interrupts, run_cli

one_line_interrupts()  # Ctrl-C while torch and transformers load (seconds): one line, not their traceback

from accelerate import PartialState
from loguru import logger

from paraphrx.callbacks import evaluate_full_validation
from paraphrx.config import RECIPE_DATACLASSES
from paraphrx.logs import run_logging
from paraphrx.modeling import check_model_source, load_model_and_tokenizer
from paraphrx.recipe_cli import parse_recipe_or_exit
from paraphrx.run_outputs import claim_run_folder, finalize_run, hub_push, push_run, resolved_recipe, resume_hint
from paraphrx.trainer_factory import build_trainer, end_run
from paraphrx.training_data import check_dataset_source, load_token_supersets, load_training_splits


def main(script_args, training_args, model_args):
    """Train one recipe end to end; returns the trainer (its model holds the final adapter). What the run changes in
    this process (logging, the fast path's patches, the folder's lock) is undone when it returns or fails."""
    with ExitStack() as run:
        run.enter_context(
            run_logging(
                training_args.run_name,
                training_args.log_dir,
                main_process=PartialState().is_main_process,
                interrupted=lambda: resume_hint(training_args.output_dir),
            )
        )
        recipe = resolved_recipe(script_args, training_args, model_args)
        logger.info("run {} → {}", training_args.run_name, training_args.output_dir)
        check_dataset_source(script_args)  # a mistyped folder is named now, not after a trip to the Hub
        check_model_source(model_args)
        hub_repo = run.enter_context(hub_push(training_args))  # push_to_hub: the repo exists before training
        # one run per folder; where it trains (a staging folder when replacing a finished run); what it resumes from
        folder = run.enter_context(claim_run_folder(training_args))

        with_eval = training_args.eval_strategy != "no"
        train_dataset, eval_dataset, full_eval_dataset, dataset_record = load_training_splits(
            script_args, training_args.seed, with_eval
        )
        # the splits whose rows every run takes its tokens from: tokenized by the first run, then from the cache
        supersets = load_token_supersets(script_args, with_eval)
        model, tokenizer = load_model_and_tokenizer(model_args, training_args)
        trainer = build_trainer(
            model,
            tokenizer,
            training_args,
            model_args,
            train_dataset,
            eval_dataset,
            undo=run,
            token_supersets=supersets,
        )

        trainer.train(resume_from_checkpoint=folder.checkpoint)
        evaluate_full_validation(trainer, full_eval_dataset)  # the kept adapter on the whole validation split
        finalize_run(
            trainer,
            recipe,
            dataset_record,
            training_args.keep_checkpoints,
            output_dir=folder.output_dir,
            hub_repo=hub_repo,
        )
        end_run(trainer)
        if hub_repo is not None:
            push_run(folder.output_dir, hub_repo)
        return trainer


if __name__ == "__main__":
    sys.exit(run_cli(main, *parse_recipe_or_exit(dataclass_types=RECIPE_DATACLASSES)))
