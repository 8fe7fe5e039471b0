"""Robustness of one model's scores across the paraphrases of each prompt (definitions: docs/evaluation.md).

Pure functions over a list of row dicts (one model, usually one source), each with `source`, `prompt_count`, `bucket`,
`instruct_type` and a score in [0, 1] under the metric's name. A prompt is (source, prompt_count). Empty inputs give
None rather than a made-up number.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict

from paraphrx.buckets import BUCKETS

ORIGINAL = "instruction_original"  # the `instruct_type` of a prompt's own wording (the pipeline's too)


def _mean(values) -> float | None:
    values = list(values)
    return statistics.fmean(values) if values else None


def by_prompt(rows: list[dict], metric: str) -> dict[tuple, list[float]]:
    """Scores grouped per prompt, keyed by (source, prompt_count)."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        groups[(row["source"], row["prompt_count"])].append(float(row[metric]))
    return dict(groups)


def mean_by_bucket(rows: list[dict], metric: str) -> dict[int, float | None]:
    """Mean score over all rows of each bucket 1..5 (None where a bucket has no rows)."""
    groups: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        groups[int(row["bucket"])].append(float(row[metric]))
    return {b: _mean(groups.get(b, [])) for b in BUCKETS}


def bucket_gap(rows: list[dict], metric: str) -> float | None:
    """mean(bucket 1) - mean(bucket 5): how much worse the phrasings the base model found hardest still do."""
    means = mean_by_bucket(rows, metric)
    if means[1] is None or means[5] is None:
        return None
    return means[1] - means[5]


def spread(rows: list[dict], metric: str) -> dict[str, float | None]:
    """Per prompt: max - min and the population std of its paraphrases' scores, each averaged over prompts."""
    groups = by_prompt(rows, metric).values()
    return {
        "spread": _mean(max(s) - min(s) for s in groups),
        "std": _mean(statistics.pstdev(s) for s in groups),
    }


def worst_case(rows: list[dict], metric: str) -> float | None:
    """Mean over prompts of the lowest score among its paraphrases."""
    return _mean(min(s) for s in by_prompt(rows, metric).values())


def pdr(rows: list[dict], metric: str) -> float | None:
    """Performance drop rate against the original wording: 1 - mean(paraphrases) / mean(originals).

    Pooled over the prompts that have an original row; None when the originals score 0 on average (undefined).
    """
    with_original = {(r["source"], r["prompt_count"]) for r in rows if r["instruct_type"] == ORIGINAL}
    rows = [r for r in rows if (r["source"], r["prompt_count"]) in with_original]
    original = _mean(float(r[metric]) for r in rows if r["instruct_type"] == ORIGINAL)
    paraphrased = _mean(float(r[metric]) for r in rows if r["instruct_type"] != ORIGINAL)
    if not original or paraphrased is None:
        return None
    return 1.0 - paraphrased / original


def cps(rows: list[dict], metric: str) -> float | None:
    """Combined Performance Score (Mizrahi et al. 2024) per prompt, MaxP * (1 - (MaxP - AvgP)), averaged over prompts."""
    values = []
    for scores in by_prompt(rows, metric).values():
        max_p, avg_p = max(scores), statistics.fmean(scores)
        values.append(max_p * (1.0 - (max_p - avg_p)))
    return _mean(values)


def consistency(rows: list[dict], answer_key: str = "answer") -> float | None:
    """Share of paraphrase pairs of a prompt that extracted the same answer, averaged over prompts with >= 2 rows.

    A missing answer (None: nothing extracted) never agrees with anything, not even another None.
    """
    groups: dict[tuple, list] = defaultdict(list)
    for row in rows:
        groups[(row["source"], row["prompt_count"])].append(row.get(answer_key))
    shares = []
    for answers in groups.values():
        n = len(answers)
        if n >= 2:
            # Counting equal answers instead of listing pairs: 300 paraphrases are 45k pairs per prompt.
            same = sum(c * (c - 1) // 2 for c in Counter(a for a in answers if a is not None).values())
            shares.append(same / (n * (n - 1) // 2))
    return _mean(shares)


def robustness_report(rows: list[dict], metric: str) -> dict:
    """Every robustness number for one model on one metric, as stored in summary.json."""
    return {
        "metric": metric,
        "n_rows": len(rows),
        "n_prompts": len(by_prompt(rows, metric)),
        "mean": _mean(float(r[metric]) for r in rows),
        "mean_by_bucket": mean_by_bucket(rows, metric),
        "bucket_gap": bucket_gap(rows, metric),
        **spread(rows, metric),
        "worst_case": worst_case(rows, metric),
        "pdr": pdr(rows, metric),
        "cps": cps(rows, metric),
    }
