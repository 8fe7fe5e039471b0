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
from trl import TrlParser

from paraphrx.eval.config import EvalArguments, EvalModelConfig
from paraphrx.eval.pipeline import EvalError, run_evaluation
from paraphrx.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = TrlParser((EvalArguments, EvalModelConfig))
    try:
        eval_args, model_args = parser.parse_args_and_config(argv)
    except ValueError as err:  # the dataclasses' own checks (e.g. --batch_size 0)
        parser.error(str(err))
    setup_logging("evaluate", log_dir=eval_args.log_dir)
    try:
        out_dir = run_evaluation(eval_args, model_args)
    except EvalError as err:
        logger.error("{}", err)
        return 2
    logger.info("report written to {}", out_dir / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
