"""The exact completion-only mask, token by token, through SFTTrainer's own processing; and the debug view."""

import copy

import pytest
from datasets import Dataset, concatenate_datasets

from paraphrx.dataset_io import load_prepared
from paraphrx.label_mask import IGNORE_INDEX, main, mask_runs, render_label_mask
from paraphrx.library_internals import prepare_sft_dataset
from paraphrx.modeling import load_model_and_tokenizer
from paraphrx.recipe_cli import parse_recipe
from paraphrx.trainer_factory import build_trainer
from tests.conftest import REPO, tiny_recipe

TINY = tiny_recipe()


def _gemma_prompt(tokenizer, row) -> str:
    """The contract's `gemma` template: the chat template's one user turn + generation prompt, minus `<bos>`."""
    content = row["paraphrase"] + ("\n\n" + row["input"] if row["input"] else "")
    messages = [{"role": "user", "content": content}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return rendered.removeprefix(tokenizer.bos_token)


@pytest.fixture(scope="module")
def mask_setup(tiny_model_dir, prepared_dataset_dir, tmp_path_factory):
    """A real SFTTrainer (tiny 4-bit model, LoRA) over alpaca-template rows (with and without input, gsm8k too) and
    the same rows in the gemma template."""
    out = tmp_path_factory.mktemp("mask")
    script_args, training_args, model_args = parse_recipe(
        [TINY, "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--max_length", "2048"]
    )
    rows = load_prepared(str(prepared_dataset_dir), "bucket1_5")
    pick = [
        rows.filter(
            lambda s, i: s == src and bool(i) == has_input,  # noqa: B023 (filter runs in this iteration)
            input_columns=["source", "input"],
        ).select([0])
        for src, has_input in (("alpaca", True), ("alpaca", False), ("gsm8k", False))
    ]
    alpaca = concatenate_datasets(pick)
    model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    gemma = Dataset.from_list(
        [
            {**r, "prompt": _gemma_prompt(tokenizer, r), "completion": r["completion"] + "<end_of_turn>\n"}
            for r in alpaca
        ]
    )
    raw = concatenate_datasets([alpaca, gemma])
    trainer = build_trainer(model, tokenizer, training_args, model_args, raw, eval_dataset=raw)
    return trainer, tokenizer, raw, training_args


def test_rows_cover_both_templates_and_inputs(mask_setup):
    _, _, raw, _ = mask_setup
    prompts = raw["prompt"]
    assert any(p.startswith("Below is an instruction that describes a task, paired with an input") for p in prompts)
    assert any(p.startswith("Below is an instruction that describes a task. Write") for p in raw["prompt"])
    assert sum(p.startswith("<start_of_turn>user\n") for p in raw["prompt"]) == 3
    assert not any(p.startswith("<bos>") for p in raw["prompt"])


def test_mask_is_exact_token_by_token(mask_setup):
    trainer, tokenizer, raw, _ = mask_setup
    assert len(trainer.train_dataset) == len(raw)
    for i, row in enumerate(raw):
        ids, labels = trainer.train_dataset[i]["input_ids"], trainer.train_dataset[i]["labels"]
        prompt_ids = tokenizer(row["prompt"])["input_ids"]  # the tokenizer adds <bos> itself
        n = len(prompt_ids)
        assert ids[0] == tokenizer.bos_token_id and labels[0] == IGNORE_INDEX
        assert ids[:n] == prompt_ids, "prompt tokens must be a prefix of prompt+completion"
        assert all(label == IGNORE_INDEX for label in labels[:n]), f"row {i}: a prompt token trains"
        assert labels[n:] == ids[n:], f"row {i}: a completion token is masked"
        assert labels[n] != IGNORE_INDEX, "the first completion token trains (no off-by-one)"
        assert ids[-1] == tokenizer.eos_token_id and labels[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[n:]) == row["completion"] + tokenizer.eos_token


def test_collator_keeps_the_mask_and_pads_with_ignore(mask_setup):
    trainer, tokenizer, raw, _ = mask_setup
    examples = [trainer.train_dataset[i] for i in range(len(raw))]
    batch = trainer.data_collator(examples)
    for i, example in enumerate(examples):
        n = len(example["input_ids"])
        assert batch["labels"][i, :n].tolist() == example["labels"]
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all() and (batch["attention_mask"][i, n:] == 0).all()


def test_debug_view_prepares_rows_exactly_like_the_trainer(mask_setup):
    trainer, tokenizer, raw, training_args = mask_setup
    prepared = prepare_sft_dataset(raw, tokenizer, training_args)  # SFTTrainer's preparation, without a model
    assert prepared["input_ids"] == trainer.train_dataset["input_ids"]
    assert prepared["labels"] == trainer.train_dataset["labels"]


def test_debug_view_shows_masked_prompt_and_trained_completion(mask_setup):
    _, tokenizer, raw, training_args = mask_setup
    text = render_label_mask(raw, tokenizer, training_args, num_examples=6)
    blocks = text.split("\n\n")
    assert len(blocks) == 6
    for block, row in zip(blocks, raw):
        assert f"MASKED  ({len(tokenizer(row['prompt'])['input_ids'])}): {('<bos>' + row['prompt'])!r}" in block
        assert f": {(row['completion'] + '<eos>')!r}" in block.split("TRAINED")[1]
        assert "boundary: " in block and "[.]" in block and "[+]" in block


def test_debug_view_reports_rows_truncation_drops(mask_setup):
    _, tokenizer, raw, training_args = mask_setup
    short = copy.copy(training_args)
    short.max_length = 8  # every prompt here is longer: TRL drops all rows, the view must say so, not misalign
    blocks = render_label_mask(raw, tokenizer, short, num_examples=2).split("\n\n")
    assert len(blocks) == 2 and all("DROPPED" in b and "max_length=8" in b for b in blocks)


def test_mask_runs_groups_consecutive_tokens():
    assert mask_runs([5, 6, 7, 8], [IGNORE_INDEX, IGNORE_INDEX, 7, 8]) == [(False, [5, 6]), (True, [7, 8])]


def test_label_mask_cli_on_the_tiny_recipe(tiny_model_dir, prepared_dataset_dir, tmp_path):
    text = main(
        [
            TINY,
            "--num_examples",
            "2",
            "--show_tokens",
            "--model_name_or_path",
            str(tiny_model_dir),
            "--dataset_name",
            str(prepared_dataset_dir),
            "--log_dir",
            str(tmp_path / "logs"),
        ]
    )
    assert text.count("example ") == 2 and "TRAINED" in text and "<eos>" in text
    token_lines = [line for line in text.splitlines() if line.lstrip()[:1].isdigit()]
    assert token_lines and {line.split()[1] for line in token_lines} == {"+", "."}
    log = next((tmp_path / "logs").glob("tiny-bucket1-label-mask_*.log")).read_text()
    assert "MASKED" in log and "TRAINED" in log


def test_the_real_recipes_view_needs_no_gpu(tiny_model_dir, prepared_dataset_dir, tmp_path):
    """`recipes/bucket1-4.yaml` (bf16, fast_path auto) used to stop on a CPU with "Your setup doesn't support bf16/gpu";
    the view loads only the tokenizer (here the tiny model's, standing in for gemma-2-2b-it's)."""
    text = main(
        [
            str(REPO / "recipes" / "bucket1-4.yaml"),
            "--num_examples",
            "1",
            "--model_name_or_path",
            str(tiny_model_dir),
            "--dataset_name",
            str(prepared_dataset_dir),
            "--log_dir",
            str(tmp_path),
        ]
    )
    assert text.startswith("example 1: ") and "TRAINED" in text


def test_a_tokenizer_that_cannot_be_had_offline_is_one_line_at_once(prepared_dataset_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from paraphrx.modeling import ModelLoadError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelLoadError) as err:
        main(
            [
                str(REPO / "recipes" / "bucket1-4.yaml"),
                "--dataset_name",
                str(prepared_dataset_dir),
                "--log_dir",
                str(tmp_path),
            ]
        )
    assert str(err.value) == (
        "model_name_or_path google/gemma-2-2b-it: neither a folder here nor in the local Hugging "
        "Face cache, and HF_HUB_OFFLINE=1 forbids downloading it"
    )
