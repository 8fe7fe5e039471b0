"""Label-mask debug view: which tokens of a few training rows carry loss and which are masked (-100).

    python -m paraphrx.label_mask recipes/tiny/bucket1.yaml --num_examples 3 [--show_tokens] [--any_recipe_key v]

Rows go through SFTTrainer's own dataset preparation (add `<eos>`, tokenize prompt and prompt+completion, build
`labels`), so what is shown is exactly what trains — only the tokenizer is loaded, never the model. Output is plain
text (no colours), readable in a terminal and in the log file: runs of masked and trained tokens, the exact
prompt→completion boundary, and with `--show_tokens` one line per token (`+` trains, `.` is masked).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from datasets import Dataset
from loguru import logger

from paraphrx.config import RECIPE_DATACLASSES
from paraphrx.errors import loading, run_cli
from paraphrx.library_internals import prepare_sft_dataset
from paraphrx.logs import run_logging
from paraphrx.modeling import ModelLoadError, check_model_source, load_tokenizer
from paraphrx.recipe_cli import parse_recipe_or_exit
from paraphrx.training_data import check_dataset_source, load_training_splits

IGNORE_INDEX = -100
_ROW = "__label_mask_row"  # pairs prepared rows with their source rows


def mask_runs(input_ids: list[int], labels: list[int]) -> list[tuple[bool, list[int]]]:
    """Consecutive stretches of (trained?, token ids)."""
    runs: list[tuple[bool, list[int]]] = []
    for token, label in zip(input_ids, labels):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(token)
        else:
            runs.append((trained, [token]))
    return runs


def render_example(
    tokenizer, input_ids: list[int], labels: list[int], header: str = "", show_tokens: bool = False
) -> str:
    """One example as text: counts, each masked/trained run, the boundary tokens, optionally every token."""
    trained = sum(label != IGNORE_INDEX for label in labels)
    lines = [f"{header}tokens={len(input_ids)} masked={len(input_ids) - trained} trained={trained}"]
    for is_trained, ids in mask_runs(input_ids, labels):
        tag = "TRAINED" if is_trained else "MASKED "
        lines.append(f"  {tag} ({len(ids)}): {tokenizer.decode(ids)!r}")
    first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)
    if first is not None:
        window = range(max(0, first - 3), min(len(input_ids), first + 3))
        lines.append("  boundary: " + " ".join(_token_cell(tokenizer, input_ids[i], labels[i]) for i in window))
    if show_tokens:
        for i, (token, label) in enumerate(zip(input_ids, labels)):
            mark = "+" if label != IGNORE_INDEX else "."
            lines.append(f"  {i:5d} {mark} {token:7d} {tokenizer.decode([token])!r}")
    return "\n".join(lines)


def _token_cell(tokenizer, token: int, label: int) -> str:
    return ("[+]" if label != IGNORE_INDEX else "[.]") + repr(tokenizer.decode([token]))


def render_label_mask(
    dataset: Dataset, tokenizer, training_args, num_examples: int = 3, show_tokens: bool = False
) -> str:
    """The debug view for the first `num_examples` rows of a prompt/completion dataset."""
    rows = dataset.select(range(min(num_examples, len(dataset))))
    # SFTTrainer drops rows left without a trained token (a prompt that fills max_length); the index keeps the rest
    # paired with their source row.
    prepared = prepare_sft_dataset(
        rows.add_column(_ROW, list(range(len(rows)))), tokenizer, training_args, "label-mask"
    )
    by_row = {row[_ROW]: row for row in prepared}
    blocks = []
    for i, raw in enumerate(rows):
        meta = " ".join(f"{k}={raw[k]}" for k in ("source", "prompt_count", "bucket", "instruct_type") if k in raw)
        header = f"example {i + 1}: {meta} "
        if i in by_row:
            blocks.append(render_example(tokenizer, by_row[i]["input_ids"], by_row[i]["labels"], header, show_tokens))
        else:
            blocks.append(f"{header}DROPPED: no completion token within max_length={training_args.max_length}")
    return "\n\n".join(blocks)


@dataclass
class LabelMaskArguments:
    num_examples: int = field(default=3, metadata={"help": "How many training rows to show."})
    show_tokens: bool = field(default=False, metadata={"help": "Also print one line per token."})


# The view loads no model and trains nothing: the settings of a GPU recipe that only matter on a device (bf16 refuses
# a machine without a GPU) or for reporting are set aside, so `recipes/bucket1-4.yaml` works on any CPU.
NO_DEVICE = [
    "--use_cpu",
    "true",
    "--bf16",
    "false",
    "--fp16",
    "false",
    "--fast_path",
    "off",
    "--report_to",
    "none",
    "--push_to_hub",
    "false",
]


def main(argv: list[str] | None = None) -> str:
    """The view for the recipe on the command line, logged; returns its text."""
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args, training_args, model_args, view_args = parse_recipe_or_exit(
        [*argv, *NO_DEVICE], (*RECIPE_DATACLASSES, LabelMaskArguments)
    )
    with run_logging(f"{training_args.run_name}-label-mask", training_args.log_dir):
        check_dataset_source(script_args)
        check_model_source(model_args, filename="tokenizer_config.json")  # only the tokenizer is loaded
        train, _, _, record = load_training_splits(script_args, training_args.seed, with_eval=False)
        with loading(f"tokenizer of {model_args.model_name_or_path}", ModelLoadError):
            tokenizer = load_tokenizer(model_args, training_args.trust_remote_code)
        text = render_label_mask(train, tokenizer, training_args, view_args.num_examples, view_args.show_tokens)
        logger.info(
            "label mask of {}:{} ({})\n{}",
            record["dataset"],
            record["train_split"],
            model_args.model_name_or_path,
            text,
        )
    return text


if __name__ == "__main__":
    sys.exit(run_cli(main))
