"""A prepared dataset's rows tokenized once for every run that trains or evaluates on them.

The five runs of `make train-all` train on nested bucket ranges of one prepared dataset (bucket1 within bucket1_2
within ... bucket1_5) and evaluate on rows of its one validation split, so SFTTrainer would tokenize largely the same
rows in every run (5-6 s of each run's start-up on the H200's host at the held-out size). SFTTrainer prepares each
row up to its labels (EOS, tokenization, completion mask) from that row alone, so a run's rows can be taken from the
prepared rows of a split that holds them all, its superset (training: the widest bucket split; evaluation: the whole
validation split; training_data.load_token_supersets):
- SFTTrainer prepares the superset itself, with the run's tokenizer and settings but without truncation, packing or
  shuffling. The datasets cache keeps the result under a fingerprint of the rows, the function and the tokenizer
  with its settings, written under a temporary name and renamed into place (whole after a kill at any instant, safe
  for two processes at once), so the later runs of `make train-all`, and a rerun, load it instead of tokenizing;
- every row of the run is looked up in the superset by its whole content (every column equal), in the run's order;
  a row that is not there means no reuse;
- a few of the selected rows are prepared afresh, in memory, and must equal the cached ones: otherwise a warning,
  and the run's rows are prepared afresh in memory;
- the rest of SFTTrainer's preparation (truncation to `max_length`, packing, shuffling) runs on the selection as it
  would on the run's own rows: SFTTrainer does not tokenize rows that have `input_ids` nor relabel rows with `labels`.
The result equals SFTTrainer's preparation of the run's own rows, column for column (tests/paraphrx/test_token_reuse.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping

import datasets
from datasets import Dataset
from loguru import logger

from paraphrx import library_internals as internals

# Selected rows compared with a fresh preparation of the same rows before the cached tokens are trusted.
CHECKED_ROWS = 8


def _row_keys(dataset: Dataset) -> Iterator[tuple]:
    """Each row's values, in order (through an indices mapping, if any)."""
    table = dataset.with_format("arrow")[:]
    return zip(*(column.to_pylist() for column in table.columns))


def rows_in(superset: Dataset, rows: Dataset) -> list[int] | None:
    """The index in `superset` of each row of `rows` (every column equal), in the order of `rows`; None when their
    columns differ or a row is not in `superset`."""
    if rows.features != superset.features:
        return None
    index: dict[tuple, int] = {}
    for position, key in enumerate(_row_keys(superset)):
        index.setdefault(key, position)
    found = [index.get(key) for key in _row_keys(rows)]
    return None if None in found else found


def reusable(rows, superset) -> bool:
    """Whether `rows` can be taken from `superset`'s prepared rows: both are Arrow datasets, the superset lives in
    the datasets cache (an in-memory one would be tokenized whole again in every run), and `rows` are not tokenized
    yet."""
    return (
        isinstance(rows, Dataset)
        and isinstance(superset, Dataset)
        and datasets.is_caching_enabled()
        and bool(superset.cache_files)
        and len(rows) > 0
        and "input_ids" not in rows.column_names
    )


def in_memory(rows: Dataset) -> Dataset:
    """A copy of `rows` that datasets never caches: what is prepared from it is computed afresh."""
    return Dataset.from_dict(rows.to_dict(), features=rows.features)


def _per_row(args, processes: bool = True):
    """The training arguments for SFTTrainer's per-row preparation: no truncation, no shuffling (applied to the
    selection afterwards, as to the run's own rows); without `processes`, in this process."""
    per_row = copy.copy(args)
    per_row.max_length, per_row.shuffle_dataset = None, False
    if not processes:
        per_row.dataset_num_proc = None
    return per_row


def first_difference(prepare: Callable, rows: Dataset, selected: Dataset, args) -> int | None:
    """The first of the checked rows whose cached preparation (`selected`) differs from a fresh one, or None."""
    step = max((len(rows) - 1) / max(CHECKED_ROWS - 1, 1), 1)
    checked = sorted({min(round(i * step), len(rows) - 1) for i in range(CHECKED_ROWS)})
    fresh = prepare(in_memory(rows.select(checked)), args=_per_row(args, processes=False), packing=False)
    if len(fresh) != len(checked):  # not one prepared row per row: nothing to compare row by row
        return checked[0]
    for position, cached, made in zip(checked, selected.select(checked), fresh):
        if cached != made:
            return position
    return None


def prepare_from_superset(prepare: Callable, rows: Dataset, superset: Dataset, args, dataset_name: str) -> Dataset:
    """SFTTrainer's preparation of `rows` (`prepare`, as PreparationHook passes it), their tokens taken from the
    prepared `superset` where it holds every row (module docstring); otherwise `prepare(rows)`."""
    if not reusable(rows, superset):
        return prepare(rows)
    indices = rows_in(superset, rows)
    if indices is None:
        logger.info("tokens: the {} rows are not all in {}: tokenized on their own", dataset_name, superset.split)
        return prepare(rows)
    whole = prepare(superset, args=_per_row(args), packing=False)
    if len(whole) != len(superset):  # SFTTrainer dropped rows before truncation: not one row per row
        return prepare(rows)
    selected = whole if indices == list(range(len(whole))) else whole.select(indices, keep_in_memory=True)
    differs = first_difference(prepare, rows, selected, args)
    if differs is not None:
        logger.warning(
            "tokens: the datasets cache holds other tokens for {} row {} than this tokenizer gives now; "
            "tokenizing the run's {:,} {} rows afresh",
            dataset_name,
            differs,
            len(rows),
            dataset_name,
        )
        return prepare(in_memory(rows))
    logger.info(
        "tokens: the {:,} {} rows taken from the {:,} rows of {}, tokenized once (datasets cache)",
        len(rows),
        dataset_name,
        len(superset),
        superset.split,
    )
    return prepare(selected)


class TokenReuse(internals.PreparationHook):
    """SFTTrainer mixin: `token_supersets` maps the name SFTTrainer gives a dataset it prepares (`train`, `eval`) to
    the split that holds its rows, whose preparation the runs share (`prepare_from_superset`)."""

    def __init__(self, *args, token_supersets: Mapping[str, Dataset] | None = None, **kwargs):
        self.token_supersets = dict(token_supersets or {})
        super().__init__(*args, **kwargs)

    def prepare_rows(self, prepare, dataset, args, packing, formatting_func, dataset_name):
        superset = self.token_supersets.get(dataset_name)
        if superset is None or formatting_func is not None:
            return prepare(dataset)
        return prepare_from_superset(prepare, dataset, superset, args, dataset_name)
