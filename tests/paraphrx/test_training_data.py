"""Which rows a run trains and evaluates on: the bucket-range split, and validation restricted to its buckets."""

from types import SimpleNamespace

import pytest

from paraphrx.training_data import TrainingDataError, load_training_splits


def _args(dataset, split="bucket1_2", **extra):
    return SimpleNamespace(dataset_name=str(dataset), dataset_revision=None, dataset_train_split=split,
                           dataset_test_split="validation", max_train_samples=None, max_eval_samples=None, **extra)


def test_eval_rows_come_from_the_training_buckets_only(prepared_dataset_dir):
    train, evaluation, record = load_training_splits(_args(prepared_dataset_dir))
    assert set(train["bucket"]) == {1, 2}
    assert set(evaluation["bucket"]) == {1, 2}
    train_prompts = set(zip(train["source"], train["prompt_count"]))
    assert train_prompts.isdisjoint(zip(evaluation["source"], evaluation["prompt_count"]))
    assert record["eval_buckets"] == [1, 2] and record["train_rows"] == len(train)
    assert record["train_fingerprint"] and record["card_sha256"]


def test_sample_caps_are_seeded_and_mix_prompts(prepared_dataset_dir):
    args = _args(prepared_dataset_dir, "bucket1_5")
    args.max_train_samples, args.max_eval_samples = 32, 8
    a, ev, _ = load_training_splits(args, seed=1)
    b, _, _ = load_training_splits(args, seed=1)
    assert len(a) == 32 and len(ev) == 8 and a["prompt"] == b["prompt"]
    assert len(set(a["prompt_count"])) > 1


def test_without_eval_no_validation_is_loaded(prepared_dataset_dir):
    _, evaluation, record = load_training_splits(_args(prepared_dataset_dir), with_eval=False)
    assert evaluation is None and record["eval_rows"] == 0


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
