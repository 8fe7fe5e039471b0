"""Seeded train/validation/test split by prompt, the same for every bucket range.

Upstream redid an unseeded split per bucket range, so each run was tested on different prompts. Here a prompt's side
depends only on (seed, source, prompt_count): within each source, prompts are ranked by a keyed BLAKE2 hash and the
first ones go to test, then validation. The result does not depend on `--buckets`, on file or row order, on other
sources, or on the numpy version. Each source is split on its own, so every source reaches validation and test.
Then each split's rows: bucket ranges are filters of the training prompts' rows, in an order that does not depend
on file order either.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pyarrow.compute as pc

from prep.rows import SourceRows

TRAIN, VALIDATION, TEST = 0, 1, 2
SIDE_NAMES = {TRAIN: "train", VALIDATION: "validation", TEST: "test"}


def held_out_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """(validation, test) prompt counts for n prompts: rounded, at least 1 each when its fraction > 0, train keeps >= 1."""
    sizes = []
    room = n - 1  # training keeps at least one prompt
    for fraction in (fractions[2], fractions[1]):  # test first: with 2 prompts, the one held out is for testing
        size = math.floor(n * fraction + 0.5)
        size = min(max(size, 1 if fraction > 0 else 0), max(room, 0))
        room -= size
        sizes.append(size)
    test, validation = sizes
    return validation, test


def _rank_key(seed: int, source: str, prompt_count: int) -> bytes:
    return hashlib.blake2b(f"{source}\x1f{prompt_count}".encode(), digest_size=16, key=str(seed).encode()).digest()


def assign_sides(
    sources: list[str], prompt_counts: list[int], fractions: tuple[float, float, float], seed: int
) -> np.ndarray:
    """Side (TRAIN / VALIDATION / TEST) of each prompt, given as parallel lists of source and prompt_count."""
    sides = np.full(len(sources), TRAIN, dtype=np.int8)
    by_source: dict[str, list[int]] = {}
    for i, source in enumerate(sources):
        by_source.setdefault(source, []).append(i)
    for source, members in by_source.items():
        ranked = sorted(members, key=lambda i: (_rank_key(seed, source, prompt_counts[i]), prompt_counts[i]))
        n_validation, n_test = held_out_sizes(len(ranked), fractions)
        sides[ranked[:n_test]] = TEST
        sides[ranked[n_test : n_test + n_validation]] = VALIDATION
    return sides


def output_order(data: SourceRows) -> np.ndarray:
    """Row indices sorted by (source, prompt_count) and then input order: output independent of file order."""
    prompts = data.prompts
    prompt_rank = np.empty(prompts.num_rows, dtype=np.int64)
    order = pc.sort_indices(prompts, sort_keys=[("source", "ascending"), ("prompt_count", "ascending")]).to_numpy()
    prompt_rank[order] = np.arange(len(order))
    pid = data.rows.column("pid").to_numpy()
    return np.argsort(prompt_rank[pid], kind="stable")


def select_rows(
    data: SourceRows, sides: np.ndarray, bucket_splits: dict[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """Row indices of every split, in output order: bucket ranges are filters of the training prompts' rows."""
    order = output_order(data)
    row_side = sides[data.rows.column("pid").to_numpy()][order]
    row_bucket = data.rows.column("bucket").to_numpy()[order]
    selected = {}
    for split, buckets in bucket_splits.items():
        selected[split] = order[(row_side == TRAIN) & np.isin(row_bucket, buckets)]
    selected["validation"] = order[row_side == VALIDATION]
    selected["test"] = order[row_side == TEST]
    return selected


def split_stats(data: SourceRows, split_rows: dict[str, np.ndarray]) -> dict[str, dict]:
    pid_all = data.rows.column("pid").to_numpy()
    bucket_all = data.rows.column("bucket").to_numpy()
    source_all = np.asarray(data.prompts.column("source").to_pylist(), dtype=object)
    stats = {}
    for split, idx in split_rows.items():
        pid = pid_all[idx]
        sources, counts = np.unique(source_all[pid].astype(str), return_counts=True)
        stats[split] = {
            "rows": int(len(idx)),
            "prompts": int(len(np.unique(pid))),
            "by_bucket": {int(b): int(n) for b, n in zip(*np.unique(bucket_all[idx], return_counts=True))},
            "by_source": {str(s): int(n) for s, n in zip(sources, counts)},
        }
    return stats


def held_out_prompts(data: SourceRows, sides: np.ndarray) -> dict[str, dict[str, list[int]]]:
    sources = data.prompts.column("source").to_pylist()
    counts = data.prompts.column("prompt_count").to_pylist()
    held = {}
    for side in (VALIDATION, TEST):
        by_source: dict[str, list[int]] = {}
        for source, count, s in sorted(zip(sources, counts, sides.tolist())):
            if s == side:
                by_source.setdefault(source, []).append(count)
        held[SIDE_NAMES[side]] = by_source
    return held
