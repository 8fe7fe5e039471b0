"""Answer every held-out paraphrase with the base model and each LoRA adapter, score the answers, and report how
robust each model is to the phrasing.

    python evaluate_paraphrx.py                                         # base + every outputs/bucket*/ adapter
    python evaluate_paraphrx.py --adapters outputs/bucket1 outputs/bucket1-5 --max_prompts 5
    python evaluate_paraphrx.py --merge_adapters                        # merge_and_unload() each adapter first
    python evaluate_paraphrx.py --recompute_metrics_only                # re-score cached generations, no model
    python evaluate_paraphrx.py --config eval.yaml                      # the same flags from a YAML file

Results: outputs/eval/<output_name>/ (generations.jsonl, summary.json, report.md, score_by_bucket.png, bucket_gap.png).
"""

import sys

from loguru import logger

from paraphrx.eval.config import EvalArguments, EvalModelConfig
from paraphrx.eval.pipeline import EvalError, one_line, run_evaluation
from paraphrx.logs import log_crash, setup_logging
from paraphrx.recipe_cli import parse_recipe_or_exit

EXIT_BAD_INPUT = 2


def describe(err: OSError) -> str:
    """`<path>: <what>` for a file system error, else the message on one line (Hub and connection errors)."""
    if err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return f"{type(err).__name__}: {one_line(err)}"


def main(argv: list[str] | None = None) -> int:
    # Bad flags or a bad --config YAML (syntax, unknown key, wrong type): one line `error: ...`, exit code 2.
    eval_args, model_args = parse_recipe_or_exit(argv, (EvalArguments, EvalModelConfig))
    try:
        setup_logging("evaluate", log_dir=eval_args.log_dir)
    except OSError as err:
        print(f"error: --log_dir: {describe(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        out_dir = run_evaluation(eval_args, model_args)
    except EvalError as err:
        logger.error("{}", err)
        return EXIT_BAD_INPUT
    except OSError as err:  # includes ConnectionError and huggingface_hub's HTTP/offline errors (dataset, Hub)
        logger.error("{}", describe(err))
        return EXIT_BAD_INPUT
    except Exception as err:
        log_crash(err)
        return 1
    logger.info("report written to {}", out_dir / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
