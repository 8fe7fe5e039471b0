"""The rows a training run sees: the recipe's bucket-range split for training, and the `validation` split
restricted to the same buckets for eval loss (a fixed subset of it every `eval_steps`, the whole of it once at the
end: `paraphrx.eval_subset`), both through `paraphrx.dataset_io.load_prepared`; and the splits that hold those rows, whose
tokens every run shares (`paraphrx.token_reuse`)."""

from __future__ import annotations

from datasets import Dataset
from loguru import logger

from paraphrx.buckets import BUCKETS, BucketSpecError, buckets_of_split, split_name
from paraphrx.dataset_io import check_local_dataset, dataset_fingerprint, load_prepared
from paraphrx.errors import EXIT_FAILED, UserError, loading
from paraphrx.eval_subset import EvalSubsetError, select_eval_subset


class TrainingDataError(UserError):
    """The recipe's dataset or split cannot be loaded; the message is one line meant for the user."""

    exit_code = EXIT_FAILED


def _load(dataset: str, split: str, revision: str | None, buckets=None) -> Dataset:
    with loading(f"{dataset} (split {split!r})", TrainingDataError):
        return load_prepared(dataset, split, revision=revision, buckets=buckets)


def check_dataset_source(script_args) -> None:
    """A dataset folder that does not exist is named at once (e.g. before `make prep`), not sent to the Hub."""
    try:
        check_local_dataset(script_args.dataset_name or "")
    except FileNotFoundError as err:
        raise TrainingDataError(f"dataset_name {script_args.dataset_name}: {err.strerror}") from None


def load_training_splits(
    script_args, seed: int = 42, with_eval: bool = True
) -> tuple[Dataset, Dataset | None, Dataset | None, dict]:
    """(train, the evaluation subset, the whole validation split of the run's buckets, record for `dataset.json`);
    both evaluation sets are None without evaluation."""
    name, revision = script_args.dataset_name, script_args.dataset_revision
    if not name:
        raise TrainingDataError("dataset_name: no dataset given (a prepared folder or a Hub id)")
    try:
        buckets = buckets_of_split(script_args.dataset_train_split)
    except BucketSpecError as err:
        raise TrainingDataError(f"dataset_train_split: {err}") from None
    train = _load(name, script_args.dataset_train_split, revision)
    if script_args.max_train_samples is not None:
        # a seeded sample across prompts, not the first prompt's rows
        train = train.shuffle(seed=seed).select(range(min(script_args.max_train_samples, len(train))))
    validation = evaluation = subset_record = None
    if with_eval:
        validation = _load(name, script_args.dataset_test_split, revision, buckets=buckets)
        if len(validation):
            try:
                evaluation, subset_record = select_eval_subset(validation, script_args.eval_subset_rows, seed)
            except EvalSubsetError as err:
                raise TrainingDataError(f"{name} (split {script_args.dataset_test_split!r}): {err}") from None
    for split, ds in (("train", train), ("eval", validation)):
        if ds is not None and len(ds) == 0:
            raise TrainingDataError(f"{name}: the {split} split for buckets {list(buckets)} has no rows")
    record = {
        **dataset_fingerprint(name, revision),
        "train_split": script_args.dataset_train_split,
        "train_rows": len(train),
        "train_fingerprint": train._fingerprint,
        "eval_split": script_args.dataset_test_split if evaluation is not None else None,
        "eval_buckets": list(buckets),
        "eval_rows": len(evaluation) if evaluation is not None else 0,
        "eval_fingerprint": evaluation._fingerprint if evaluation is not None else None,
        "full_eval_rows": len(validation) if validation is not None else 0,
        "full_eval_fingerprint": validation._fingerprint if validation is not None else None,
        "eval_subset": subset_record,
    }
    logger.info("data: {} train rows from {}:{}", record["train_rows"], name, record["train_split"])
    if evaluation is not None:
        logger.info(
            "data: {} of {} validation rows ({} of {} prompts) from {}:{} buckets {} evaluated every eval_steps, all "
            "of them once at the end",
            record["eval_rows"],
            record["full_eval_rows"],
            subset_record["prompts"],
            subset_record["of_prompts"],
            name,
            record["eval_split"],
            list(buckets),
        )
    return train, evaluation, validation, record


def load_token_supersets(script_args, with_eval: bool = True) -> dict[str, Dataset]:
    """The splits a run's rows are taken from once tokenized (token_reuse.py), by the name SFTTrainer gives the rows:
    `train`: the widest bucket split (every training row; none where the dataset lacks it, e.g. prepared with other
    `--buckets`, or where the run trains on a `max_train_samples` sample, for which tokenizing every row would cost
    more than its own); `eval`: the whole validation split, of which the run evaluates on a part every `eval_steps`
    and on its buckets' rows at the end."""
    name, revision = script_args.dataset_name, script_args.dataset_revision
    supersets = {}
    if script_args.max_train_samples is None:
        widest = split_name(BUCKETS)
        try:
            supersets["train"] = _load(name, widest, revision)
        except TrainingDataError as err:
            logger.info("data: training rows tokenized in this run only: {}", err)
    if with_eval:
        supersets["eval"] = _load(name, script_args.dataset_test_split, revision)
    return supersets
