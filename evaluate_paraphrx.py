"""Answer every held-out paraphrase with the base model and each LoRA adapter, score the answers, and report how
robust each model is to the phrasing.

    python evaluate_paraphrx.py                                         # base + every outputs/bucket*/ adapter
    python evaluate_paraphrx.py --adapters outputs/bucket1 outputs/bucket1-5 --max_prompts 5
    python evaluate_paraphrx.py --merge_adapters                        # merge_and_unload() each adapter first
    python evaluate_paraphrx.py --recompute_metrics_only                # re-score cached generations, no model
    python evaluate_paraphrx.py --config eval.yaml                      # the same flags from a YAML file
    python evaluate_paraphrx.py --judge_model M --judge_base_url http://localhost:8000/v1   # + an LLM judge's scores

Results: outputs/eval/<output_name>/ (generations.jsonl, summary.json, report.md, score_by_bucket.png, bucket_gap.png,
style_drop.png).
"""

# ruff: noqa: E402 - the Ctrl-C hook goes in before the heavy imports
import sys

from paraphrx.errors import one_line_interrupts, run_cli

one_line_interrupts()  # Ctrl-C while torch and transformers load (seconds): one line, not their traceback

from loguru import logger

from paraphrx.eval.config import EvalArguments, EvalModelConfig, check_rescoring_flags
from paraphrx.eval.pipeline import run_evaluation
from paraphrx.logs import run_logging
from paraphrx.recipe_cli import parse_recipe_or_exit


def evaluate(eval_args: EvalArguments, model_args: EvalModelConfig):
    """Evaluate and write the results folder; returns it."""
    with run_logging("evaluate", log_dir=eval_args.log_dir, interrupted=lambda: interrupted_hint(eval_args)):
        out_dir = run_evaluation(eval_args, model_args)
        logger.info("report written to {}", out_dir / "report.md")
        return out_dir


def interrupted_hint(eval_args: EvalArguments) -> str:
    if eval_args.use_cache and not eval_args.recompute_metrics_only:
        return f"the answers generated so far are kept in {eval_args.cache_dir}; rerun the same command to go on"
    return "no report was written; rerun the same command"


def main(argv: list[str] | None = None) -> int:
    """The command line: the process's exit code (a bad flag or --config YAML is one line `error: ...`, exit 2)."""
    return run_cli(evaluate, *parse_recipe_or_exit(argv, (EvalArguments, EvalModelConfig), check_rescoring_flags))


if __name__ == "__main__":
    sys.exit(main())
