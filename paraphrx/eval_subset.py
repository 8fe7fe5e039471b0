"""The fixed evaluation subset: which validation rows a run scores every `eval_steps` (recipe key `eval_subset_rows`).

Scoring the whole validation split every 20 steps made evaluation ~90% of a run's wall time, so a run scores a fixed
subset instead, and the whole split once at the end (`paraphrx.callbacks.evaluate_full_validation`). The subset is

- stratified: every (source, bucket) stratum of the run's validation rows gets at least one row, and the rest are
  shared out in proportion to the strata's sizes (Webster's divisor method, so a stratum's share can only shrink when
  the run has more strata);
- spread over prompts: within a stratum, rows are taken round-robin over its prompts (one row of every prompt before
  a second row of any), so the subset holds as many validation prompts as its size allows;
- fixed: each stratum has one order, from a keyed hash of (seed, source, bucket, prompt_count, instruct_type), and a
  run takes a prefix of each of its strata's orders. Every evaluation of a run scores the same rows, and the five
  bucket-range runs score the same rows of the strata they share (a run with more buckets, a prefix of those rows).
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter, defaultdict

from datasets import Dataset

IDENTITY_COLUMNS = ("source", "prompt_count", "instruct_type", "bucket")


class EvalSubsetError(ValueError):
    """The subset size cannot represent the run's strata; the message is one line meant for the user."""


def _key(seed: int, *parts) -> bytes:
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=16, key=str(seed).encode()).digest()


def stratum_orders(rows: list[dict], seed: int) -> dict[tuple[str, int], list[int]]:
    """Per (source, bucket): the row indices in the stratum's fixed order (round-robin over its prompts)."""
    by_prompt: dict[tuple[str, int, int], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_prompt[(row["source"], row["bucket"], row["prompt_count"])].append(i)
    ranked: dict[tuple[str, int], list[tuple[int, bytes, int]]] = defaultdict(list)
    for (source, bucket, prompt_count), members in by_prompt.items():
        seen: Counter = Counter()  # a style named twice in one prompt: its occurrences stay distinct rows
        keyed = []
        for i in members:
            style = rows[i]["instruct_type"]
            keyed.append((_key(seed, source, prompt_count, style, seen[style]), i))
            seen[style] += 1
        prompt_key = _key(seed, source, bucket, prompt_count)  # strata start from different prompts
        for turn, (_, i) in enumerate(sorted(keyed)):
            ranked[(source, bucket)].append((turn, prompt_key, i))
    return {stratum: [i for *_, i in sorted(entries)] for stratum, entries in sorted(ranked.items())}


def allocate(sizes: dict[tuple[str, int], int], total: int) -> dict[tuple[str, int], int]:
    """`total` rows shared over strata of the given sizes: one each, the rest by Webster's divisor method."""
    shares = {stratum: 1 for stratum in sizes}
    heap = [(-size / 1.5, stratum) for stratum, size in sizes.items() if size > 1]
    heapq.heapify(heap)
    for _ in range(total - len(sizes)):
        if not heap:
            break
        _, stratum = heapq.heappop(heap)
        shares[stratum] += 1
        if shares[stratum] < sizes[stratum]:
            heapq.heappush(heap, (-sizes[stratum] / (shares[stratum] + 0.5), stratum))
    return shares


def subset_indices(identity: list[dict], rows: int | None, seed: int) -> tuple[list[int], dict]:
    """Indices of the subset of `identity` (each row's IDENTITY_COLUMNS) in their order, and its record."""
    orders = stratum_orders(identity, seed)
    if rows is not None and rows < len(orders):
        raise EvalSubsetError(
            f"eval_subset_rows: {rows} rows cannot represent the {len(orders)} (source, bucket) strata of the "
            f"validation rows; use at least {len(orders)}, or null to evaluate on the whole split"
        )
    whole = rows is None or rows >= len(identity)
    sizes = {stratum: len(order) for stratum, order in orders.items()}
    shares = sizes if whole else allocate(sizes, rows)
    chosen = sorted(i for stratum, order in orders.items() for i in order[: shares[stratum]])

    def prompts(indices) -> int:
        return len({(identity[i]["source"], identity[i]["prompt_count"]) for i in indices})

    record = {
        "rows": len(chosen),
        "of_rows": len(identity),
        "prompts": prompts(chosen),
        "of_prompts": prompts(range(len(identity))),
        "seed": seed,
        "strata": [
            {
                "source": source,
                "bucket": bucket,
                "rows": shares[(source, bucket)],
                "of_rows": len(order),
                "prompts": prompts(order[: shares[(source, bucket)]]),
                "of_prompts": prompts(order),
            }
            for (source, bucket), order in orders.items()
        ],
        # which rows; the whole split is named by the fingerprint in the record instead
        "selected": None if whole else [identity[i] for i in chosen],
    }
    return chosen, record


def select_eval_subset(validation: Dataset, rows: int | None, seed: int) -> tuple[Dataset, dict]:
    """The run's evaluation subset of `validation` (already restricted to its buckets) and its record for
    `dataset.json`. `rows=None`, or at least as many rows as the split has, keeps the whole split."""
    chosen, record = subset_indices(validation.select_columns(list(IDENTITY_COLUMNS)).to_list(), rows, seed)
    return (validation if record["selected"] is None else validation.select(chosen)), record
