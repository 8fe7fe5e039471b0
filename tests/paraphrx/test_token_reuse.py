"""Rows tokenized once for every run: each run trains and evaluates on exactly the rows SFTTrainer would give it
alone, a later run does not tokenize them again, and the cache survives a kill and two runs at once."""

import json
import shutil
from pathlib import Path

import pytest
from datasets import Dataset
from loguru import logger
from trl.trainer import sft_trainer

from paraphrx import token_reuse
from paraphrx.dataset_io import load_prepared
from paraphrx.modeling import load_model_and_tokenizer
from paraphrx.recipe_cli import parse_recipe
from paraphrx.token_reuse import CHECKED_ROWS, prepare_from_superset, rows_in
from paraphrx.trainer_factory import build_trainer
from paraphrx.training_data import load_token_supersets, load_training_splits
from tests.conftest import REPO, run_killed, start_python, tiny_recipe

# --- how many texts SFTTrainer tokenizes (two per prompt/completion row: the prompt, and prompt + completion) ------
_own_tokenize = sft_trainer._tokenize
TOKENIZED = [0]


def counting_tokenize(*args, **kwargs):
    TOKENIZED[0] += 1
    return _own_tokenize(*args, **kwargs)


def _recipe(model_dir, dataset, out, recipe="bucket1-2", *overrides):
    """A tiny recipe on a whole split (no `max_train_samples` sample), evaluating as the real recipes do."""
    return parse_recipe(
        [
            tiny_recipe(recipe),
            "--model_name_or_path",
            str(model_dir),
            "--dataset_name",
            str(dataset),
            "--output_dir",
            str(out),
            "--max_train_samples",
            "None",
            *overrides,
        ]
    )


def _trainer(model_dir, dataset, out, recipe="bucket1-2", *overrides, reuse=True):
    """The run's trainer as train_sft builds it (with or without the shared tokens) and its whole validation split."""
    script_args, training_args, model_args = _recipe(model_dir, dataset, out, recipe, *overrides)
    train, evaluation, validation, _ = load_training_splits(script_args, training_args.seed)
    supersets = load_token_supersets(script_args) if reuse else None
    model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    trainer = build_trainer(model, tokenizer, training_args, model_args, train, evaluation, token_supersets=supersets)
    return trainer, validation


def _as_evaluate_prepares(trainer, rows) -> list[dict]:
    """The rows as SFTTrainer.evaluate prepares a dataset passed to it (the whole validation split, at the end)."""
    packing = trainer.args.packing if trainer.args.eval_packing is None else trainer.args.eval_packing
    return trainer._prepare_dataset(rows, trainer.processing_class, trainer.args, packing, None, "eval").to_list()


@pytest.fixture
def reused(monkeypatch) -> list:
    """How many rows were taken from a superset's prepared rows, call by call."""
    taken, check = [], token_reuse.first_difference

    def record(prepare, rows, selected, args):
        taken.append(len(rows))
        return check(prepare, rows, selected, args)

    monkeypatch.setattr(token_reuse, "first_difference", record)
    return taken


@pytest.mark.parametrize(
    "overrides",
    [
        (),  # the tiny recipe: completion-only loss, rows cut at max_length 128 (those left with no label dropped)
        ("--packing", "true", "--completion_only_loss", "false", "--max_length", "48", "--dataset_num_proc", "2"),
    ],
    ids=["recipe", "packed-all-tokens-two-processes"],
)
def test_every_row_trains_the_tokens_sfttrainer_gives_the_run_alone(
    overrides, tiny_model_dir, prepared_dataset_dir, tmp_path, reused
):
    """Token for token (input_ids, labels: the completion mask applied) and column for column, for the training
    rows, the evaluation subset and the whole validation split scored at the end."""
    trainer, validation = _trainer(tiny_model_dir, prepared_dataset_dir, tmp_path / "reused", "bucket1-2", *overrides)
    own, _ = _trainer(tiny_model_dir, prepared_dataset_dir, tmp_path / "own", "bucket1-2", *overrides, reuse=False)

    assert trainer.train_dataset.to_list() == own.train_dataset.to_list()
    assert trainer.eval_dataset.to_list() == own.eval_dataset.to_list()
    assert _as_evaluate_prepares(trainer, validation) == _as_evaluate_prepares(own, validation)
    split = load_prepared(str(prepared_dataset_dir), "bucket1_2")
    assert reused == [len(split), 16, len(validation)]  # all three taken from the supersets (16: eval_subset_rows)
    train = own.train_dataset
    if "--packing" in overrides:  # every token trains, rows packed into sequences of 48
        assert "seq_lengths" in train.column_names and max(map(len, train["input_ids"])) == 48
        assert all(-100 not in labels for labels in train["labels"])
    else:  # the prompt is masked; the rows whose prompt fills max_length are gone
        assert len(train) < len(split) and all(labels[0] == -100 for labels in train["labels"])


def test_the_later_runs_do_not_tokenize_their_rows_again(tiny_model_dir, prepared_dataset_dir, tmp_path, monkeypatch):
    """The first run (bucket 1) tokenizes every training and validation row once; the next (buckets 1-4) and a rerun
    tokenize only the few rows they check the cached tokens against; without the shared tokens a run tokenizes its
    own rows."""
    dataset = shutil.copytree(prepared_dataset_dir, tmp_path / "data")  # new files: nothing of them cached yet
    monkeypatch.setattr(sft_trainer, "_tokenize", counting_tokenize)
    every_row = len(load_prepared(str(dataset), "bucket1_5")) + len(load_prepared(str(dataset), "validation"))
    checked = 2 * CHECKED_ROWS  # the training rows and the evaluation subset
    counts = []
    for name, recipe, reuse in [("first", "bucket1", True), ("next", "bucket1-4", True), ("rerun", "bucket1-4", True)]:
        TOKENIZED[0] = 0
        _trainer(tiny_model_dir, dataset, tmp_path / name, recipe, reuse=reuse)
        counts.append(TOKENIZED[0])
    TOKENIZED[0] = 0
    _trainer(tiny_model_dir, dataset, tmp_path / "alone", "bucket1-4", reuse=False)

    assert counts[0] >= 2 * every_row
    assert counts[1] == counts[2] == 2 * checked
    assert TOKENIZED[0] >= 2 * len(load_prepared(str(dataset), "bucket1_4"))


# --- a kill at any instant, two runs at once: the datasets cache is written whole or not at all --------------------
_DIGEST = """
import hashlib, json, sys
sys.path.insert(0, REPO)  # this checkout's paraphrx
from paraphrx.modeling import load_model_and_tokenizer
from paraphrx.recipe_cli import parse_recipe
from paraphrx.trainer_factory import build_trainer
from paraphrx.training_data import load_token_supersets, load_training_splits

script_args, training_args, model_args = parse_recipe(sys.argv[2:])
train, evaluation, _, _ = load_training_splits(script_args, training_args.seed)
model, tokenizer = load_model_and_tokenizer(model_args, training_args)
trainer = build_trainer(
    model, tokenizer, training_args, model_args, train, evaluation, token_supersets=load_token_supersets(script_args)
)
rows = {"train": trainer.train_dataset.to_list(), "eval": trainer.eval_dataset.to_list()}
with open(sys.argv[1], "w") as out:
    json.dump({name: hashlib.sha256(json.dumps(value).encode()).hexdigest() for name, value in rows.items()}, out)
"""


def _digest_argv(tmp_path, model_dir, dataset, name) -> list:
    script = tmp_path / "digest.py"
    script.write_text(_DIGEST.replace("REPO", repr(str(REPO)), 1))
    argv = [
        tiny_recipe("bucket1-2"),
        "--model_name_or_path",
        model_dir,
        "--dataset_name",
        dataset,
        "--output_dir",
        tmp_path / name,
        "--max_train_samples",
        "None",
    ]
    return [script, tmp_path / f"{name}.json", *argv]


def _reference_digest(model_dir, dataset, out) -> dict:
    import hashlib

    trainer, _ = _trainer(model_dir, dataset, out, reuse=False)
    rows = {"train": trainer.train_dataset.to_list(), "eval": trainer.eval_dataset.to_list()}
    return {name: hashlib.sha256(json.dumps(value).encode()).hexdigest() for name, value in rows.items()}


def test_a_run_killed_while_tokenizing_leaves_nothing_the_next_run_trusts(
    tiny_model_dir, prepared_dataset_dir, tmp_path
):
    """Killed halfway through tokenizing the shared rows (its cache file half written), then run again: the next run
    trains the exact tokens."""
    dataset = shutil.copytree(prepared_dataset_dir, tmp_path / "data")
    run_killed(
        _digest_argv(tmp_path, tiny_model_dir, dataset, "killed"),
        tmp_path,
        """
        from trl.trainer import sft_trainer
        tokenize, calls = sft_trainer._tokenize, []
        def tokenize_then_die(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2_000:  # row 1,000 of the 2,746 training rows
                die()
            return tokenize(*args, **kwargs)
        sft_trainer._tokenize = tokenize_then_die
        """,
    )
    cache = Path(load_prepared(str(dataset), "bucket1_5").cache_files[0]["filename"]).parent
    assert list(cache.glob("tmp*")), "the kill left a half-written file in the datasets cache"
    again = start_python(_digest_argv(tmp_path, tiny_model_dir, dataset, "again"), tmp_path)
    assert again.wait(timeout=300) == 0
    assert json.loads((tmp_path / "again.json").read_text()) == _reference_digest(tiny_model_dir, dataset, tmp_path)


def test_two_runs_tokenizing_the_shared_rows_at_once_both_train_the_exact_tokens(
    tiny_model_dir, prepared_dataset_dir, tmp_path
):
    dataset = shutil.copytree(prepared_dataset_dir, tmp_path / "data")
    runs = [start_python(_digest_argv(tmp_path, tiny_model_dir, dataset, name), tmp_path) for name in ("a", "b")]
    assert [run.wait(timeout=300) for run in runs] == [0, 0]
    reference = _reference_digest(tiny_model_dir, dataset, tmp_path)
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text()) == reference
    third = start_python(_digest_argv(tmp_path, tiny_model_dir, dataset, "c"), tmp_path)  # from their cache
    assert third.wait(timeout=300) == 0 and json.loads((tmp_path / "c.json").read_text()) == reference


# --- the parts, with a stand-in for SFTTrainer's preparation ------------------------------------------------------
def _rows(*texts) -> Dataset:
    return Dataset.from_dict({"prompt": list(texts), "completion": [t.upper() for t in texts]})


def _on_disk(dataset: Dataset, folder) -> Dataset:
    dataset.save_to_disk(str(folder))
    from datasets import load_from_disk

    return load_from_disk(str(folder))


def _fake_prepare(prepared: list, wrong: bool = False):
    """Tokens = the prompt's characters as numbers; `wrong`: the superset's cached tokens differ from fresh ones."""

    def prepare(rows, args=None, packing=False):
        prepared.append((len(rows), bool(rows.cache_files)))
        shift = 1 if wrong and rows.cache_files else 0
        return rows.map(lambda row: {"input_ids": [ord(c) + shift for c in row["prompt"]]})

    return prepare


class _Args:
    max_length, shuffle_dataset, dataset_num_proc = 8, False, None


def test_rows_are_found_by_their_whole_content_in_their_order():
    superset = _rows("a", "b", "c", "b")
    assert rows_in(superset, _rows("c", "a", "b")) == [2, 0, 1]
    assert rows_in(superset, _rows("a", "z")) is None
    assert rows_in(superset, Dataset.from_dict({"prompt": ["a"], "completion": ["x"]})) is None  # another completion
    assert rows_in(superset, Dataset.from_dict({"prompt": ["a"]})) is None  # other columns
    assert rows_in(superset, superset.select([3, 0])) == [1, 0]  # through an indices mapping


def test_rows_missing_from_the_superset_or_a_superset_in_memory_are_tokenized_on_their_own(tmp_path):
    superset = _on_disk(_rows("a", "b", "c"), tmp_path / "superset")
    prepared = []
    result = prepare_from_superset(_fake_prepare(prepared), _rows("a", "z"), superset, _Args(), "train")
    assert prepared == [(2, False)] and result["input_ids"] == [[97], [122]]
    prepared.clear()
    prepare_from_superset(_fake_prepare(prepared), _rows("a"), _rows("a", "b"), _Args(), "train")
    assert prepared == [(1, False)]


def test_cached_tokens_that_differ_from_fresh_ones_are_not_trusted(tmp_path):
    superset = _on_disk(_rows("a", "b", "c"), tmp_path / "superset")
    lines = []
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        prepared = []
        good = prepare_from_superset(_fake_prepare(prepared), _rows("c", "a"), superset, _Args(), "train")
        assert good["input_ids"] == [[99], [97]] and prepared[0] == (3, True) and not lines
        bad = prepare_from_superset(_fake_prepare([], wrong=True), _rows("c", "a"), superset, _Args(), "train")
    finally:
        logger.remove(sink)
    assert bad["input_ids"] == [[99], [97]]  # prepared afresh
    assert len(lines) == 1 and "other tokens for train row 0" in lines[0]
