"""Which rows a run trains and evaluates on: the bucket-range split, and validation restricted to its buckets (a fixed
subset of it for the evaluations during training, the whole of it at the end), and the splits holding those rows
whose tokens the runs share."""

from types import SimpleNamespace

import pytest

from paraphrx.training_data import TrainingDataError, load_token_supersets, load_training_splits


def _args(dataset, split="bucket1_2", **extra):
    return SimpleNamespace(
        dataset_name=str(dataset),
        dataset_revision=None,
        dataset_train_split=split,
        dataset_test_split="validation",
        max_train_samples=None,
        eval_subset_rows=None,
        **extra,
    )


def test_eval_rows_come_from_the_training_buckets_only(prepared_dataset_dir):
    train, evaluation, validation, record = load_training_splits(_args(prepared_dataset_dir))
    assert set(train["bucket"]) == {1, 2}
    assert set(evaluation["bucket"]) == {1, 2} and len(evaluation) == len(validation)  # null: the whole split
    train_prompts = set(zip(train["source"], train["prompt_count"]))
    assert train_prompts.isdisjoint(zip(evaluation["source"], evaluation["prompt_count"]))
    assert record["eval_buckets"] == [1, 2] and record["train_rows"] == len(train)
    assert record["train_fingerprint"] and record["card_sha256"]


def test_sample_caps_are_seeded_and_mix_prompts(prepared_dataset_dir):
    args = _args(prepared_dataset_dir, "bucket1_5")
    args.max_train_samples, args.eval_subset_rows = 32, 12
    a, ev, validation, record = load_training_splits(args, seed=1)
    b, ev_again, _, record_again = load_training_splits(args, seed=1)
    assert len(a) == 32 and a["prompt"] == b["prompt"]
    assert len(set(a["prompt_count"])) > 1
    assert len(ev) == 12 and len(validation) > 12 and ev["prompt"] == ev_again["prompt"]
    assert record == record_again and record["eval_rows"] == 12 and record["full_eval_rows"] == len(validation)
    assert record["eval_fingerprint"] != record["full_eval_fingerprint"]
    subset = record["eval_subset"]
    assert subset["rows"] == 12 and subset["of_rows"] == len(validation) and subset["seed"] == 1
    assert [(r["source"], r["prompt_count"], r["instruct_type"], r["bucket"]) for r in subset["selected"]] == list(
        zip(ev["source"], ev["prompt_count"], ev["instruct_type"], ev["bucket"])
    )
    # the shipped sample's validation holds one prompt per source, with rows in 4 buckets each: all 8 strata appear
    assert {(s["source"], s["bucket"]) for s in subset["strata"]} == set(zip(ev["source"], ev["bucket"]))
    assert len(subset["strata"]) == 8 and sum(s["rows"] for s in subset["strata"]) == 12


def test_a_subset_too_small_for_the_strata_is_a_one_line_error(prepared_dataset_dir):
    args = _args(prepared_dataset_dir, "bucket1_5")
    args.eval_subset_rows = 7
    with pytest.raises(TrainingDataError, match="eval_subset_rows: 7 rows cannot represent the 8") as err:
        load_training_splits(args)
    assert "\n" not in str(err.value)


def test_without_eval_no_validation_is_loaded(prepared_dataset_dir):
    _, evaluation, validation, record = load_training_splits(_args(prepared_dataset_dir), with_eval=False)
    assert evaluation is None and validation is None and record["eval_rows"] == 0 and record["eval_subset"] is None


@pytest.mark.parametrize(
    "split, message",
    [("bucket1_9", "dataset_train_split"), ("train", "dataset_train_split"), ("bucket2_3", "bucket2_3")],
)
def test_bad_split_is_a_one_line_error(prepared_dataset_dir, split, message):
    with pytest.raises(TrainingDataError, match=message) as err:
        load_training_splits(_args(prepared_dataset_dir, split))
    assert "\n" not in str(err.value)


def test_folder_without_card_is_a_one_line_error(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(TrainingDataError, match="README.md"):
        load_training_splits(_args(tmp_path))


def test_every_bucket_range_shares_the_widest_split_and_the_whole_validation(prepared_dataset_dir):
    """The five runs of `make train-all` get the same two splits, so the first run's tokens serve the others."""
    shared = set()
    for split in ("bucket1", "bucket1_2", "bucket1_3", "bucket1_4", "bucket1_5"):
        supersets = load_token_supersets(_args(prepared_dataset_dir, split))
        shared.add(tuple((role, str(rows.split), len(rows)) for role, rows in sorted(supersets.items())))
    validation = load_training_splits(_args(prepared_dataset_dir, "bucket1_5"))[2]
    assert shared == {(("eval", "validation", len(validation)), ("train", "bucket1_5", 2746))}


def test_a_sample_or_a_dataset_without_the_widest_split_tokenizes_its_own_training_rows(
    prepared_dataset_dir, alpaca_path, tmp_path
):
    from prep.cli import run
    from prep.config import PrepConfig

    sample = _args(prepared_dataset_dir, "bucket1_2")
    sample.max_train_samples = 64  # tokenizing every training row would cost it more than its own
    assert list(load_token_supersets(sample)) == ["eval"]
    assert load_token_supersets(_args(prepared_dataset_dir), with_eval=False).keys() == {"train"}

    config = PrepConfig(data_paths=[str(alpaca_path)], output_dir=str(tmp_path / "narrow"), buckets=["1", "1-2"])
    narrow = run(config, command="python -m prep --buckets 1 1-2")  # no bucket1_5
    assert list(load_token_supersets(_args(narrow))) == ["eval"]
