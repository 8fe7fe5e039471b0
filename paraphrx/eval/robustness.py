"""Robustness of one model's scores across the paraphrases of each prompt (definitions: docs/evaluation.md).

A `ScoreTable` holds one model's scored answers on one metric over the prompts of one source as parallel arrays;
each statistic is computed for every row of a weight matrix (`paraphrx.eval.bootstrap`): row 0 is the sample, the
others bootstrap replicates, so the point estimate and its interval come from one code path. Rows without a score
(an answer the judge could not score) are left out of the table, and counted by the caller. A statistic with no
rows to rest on is None rather than a made-up number.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from paraphrx.buckets import BUCKETS
from paraphrx.eval.bootstrap import Stat, ratio

ORIGINAL = "instruction_original"  # the `instruct_type` of a prompt's own wording (the pipeline's too)
PER_PROMPT = ("spread", "std", "worst_case", "cps")


@dataclass(frozen=True)
class ScoreTable:
    """One model's scores on one metric; `prompt` indexes the source's prompts (0..n_prompts-1)."""

    prompt: np.ndarray
    bucket: np.ndarray
    style: np.ndarray
    score: np.ndarray
    answer: np.ndarray  # the extracted answer (GSM8K number, MMLU letter) or None
    n_prompts: int

    @classmethod
    def from_rows(cls, rows: list[dict], metric: str, prompt_index: dict[tuple, int] | None = None) -> ScoreTable:
        """Rows with a score under `metric`; a prompt is (source, prompt_count), indexed in sorted order by default."""
        rows = [r for r in rows if r.get(metric) is not None]
        if prompt_index is None:
            prompt_index = {p: i for i, p in enumerate(sorted({(r["source"], r["prompt_count"]) for r in rows}))}
        return cls(
            prompt=np.array([prompt_index[(r["source"], r["prompt_count"])] for r in rows], dtype=np.int64),
            bucket=np.array([int(r["bucket"]) for r in rows], dtype=np.int64),
            style=np.array([r["instruct_type"] for r in rows], dtype=object),
            score=np.array([float(r[metric]) for r in rows], dtype=np.float64),
            answer=np.array([r.get("answer") for r in rows], dtype=object),
            n_prompts=len(prompt_index),
        )

    def prompts_where(self, mask: np.ndarray) -> np.ndarray:
        """Bool per prompt: has at least one row in `mask`."""
        return np.bincount(self.prompt[mask], minlength=self.n_prompts) > 0


def mean(table: ScoreTable, weights: np.ndarray, mask: np.ndarray | None = None) -> Stat | None:
    """Mean score over the rows in `mask` (all rows by default), pooled over prompts."""
    mask = np.ones(len(table.score), dtype=bool) if mask is None else mask
    sums = np.bincount(table.prompt[mask], weights=table.score[mask], minlength=table.n_prompts)
    counts = np.bincount(table.prompt[mask], minlength=table.n_prompts).astype(np.float64)
    return ratio(weights, sums, counts, int(mask.sum()))


def mean_by_bucket(table: ScoreTable, weights: np.ndarray) -> dict[int, Stat | None]:
    return {b: mean(table, weights, table.bucket == b) for b in BUCKETS}


def gap_bucket(buckets) -> int | None:
    """The bucket the gap is measured against: the worst (highest) bucket that has rows, if it is not bucket 1."""
    present = sorted(set(int(b) for b in buckets))
    return present[-1] if present and present[0] == 1 and present[-1] > 1 else None


def bucket_gap(table: ScoreTable, weights: np.ndarray, worst: int | None) -> Stat | None:
    """mean(bucket 1) - mean(bucket `worst`): how much worse the phrasings the base model found hardest still do."""
    if worst is None:
        return None
    first, last = mean(table, weights, table.bucket == 1), mean(table, weights, table.bucket == worst)
    return None if first is None or last is None else first - last


def per_prompt(table: ScoreTable) -> dict[str, np.ndarray]:
    """Per prompt (NaN where it has no rows): spread = max - min, std (population), worst case = min, and CPS
    (Mizrahi et al. 2024) = MaxP * (1 - (MaxP - AvgP))."""
    p, s, n = table.prompt, table.score, table.n_prompts
    count = np.bincount(p, minlength=n).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        avg = np.bincount(p, weights=s, minlength=n) / count
        var = np.bincount(p, weights=s * s, minlength=n) / count - avg**2
    high, low = np.full(n, -np.inf), np.full(n, np.inf)
    np.maximum.at(high, p, s)
    np.minimum.at(low, p, s)
    high[count == 0] = low[count == 0] = np.nan
    return {
        "spread": high - low,
        "std": np.sqrt(np.maximum(var, 0.0)),
        "worst_case": low,
        "cps": high * (1.0 - (high - avg)),
    }


def mean_over_prompts(values: np.ndarray, weights: np.ndarray, answers: int) -> Stat | None:
    """The mean over prompts of a per-prompt value (NaN = the prompt does not count)."""
    present = ~np.isnan(values)
    return ratio(weights, np.where(present, values, 0.0), present.astype(np.float64), answers)


def pdr(table: ScoreTable, weights: np.ndarray) -> Stat | None:
    """Performance drop rate against the original wording: 1 - mean(paraphrases) / mean(originals), pooled over the
    prompts that have an original row; undefined (NaN) where the originals score 0 on average."""
    original = table.style == ORIGINAL
    with_original = table.prompts_where(original)[table.prompt]
    originals = mean(table, weights, original)
    paraphrased = mean(table, weights, ~original & with_original)
    if originals is None or paraphrased is None:
        return None
    return paraphrased.combine(originals, lambda para, orig: np.where(orig > 0, 1.0 - para / orig, np.nan))


def consistency(table: ScoreTable, weights: np.ndarray) -> Stat | None:
    """Share of paraphrase pairs of a prompt that extracted the same answer, averaged over prompts with >= 2 rows.

    A missing answer (None: nothing extracted) never agrees with anything, not even another None."""
    groups: dict[int, list] = defaultdict(list)
    for prompt, answer in zip(table.prompt.tolist(), table.answer.tolist()):
        groups[prompt].append(answer)
    shares = np.full(table.n_prompts, np.nan)
    for prompt, answers in groups.items():
        n = len(answers)
        if n >= 2:
            # Counting equal answers instead of listing pairs: 300 paraphrases are 45k pairs per prompt.
            same = sum(c * (c - 1) // 2 for c in Counter(a for a in answers if a is not None).values())
            shares[prompt] = same / (n * (n - 1) // 2)
    counted = ~np.isnan(shares)
    return mean_over_prompts(shares, weights, int(np.isin(table.prompt, np.flatnonzero(counted)).sum()))


def robustness_stats(table: ScoreTable, weights: np.ndarray, worst: int | None) -> dict[str, Stat | None]:
    """Every robustness statistic of one model on one metric (consistency is added per source by the caller)."""
    values = per_prompt(table)
    stats = {"mean": mean(table, weights), "gap": bucket_gap(table, weights, worst)}
    stats.update({k: mean_over_prompts(values[k], weights, len(table.score)) for k in PER_PROMPT})
    stats["pdr"] = pdr(table, weights)
    return stats


def by_style(table: ScoreTable, weights: np.ndarray, styles: list[str] | None = None) -> dict[str, dict]:
    """Per `instruct_type` (`styles`, default the table's): its mean, and its drop against the original wording =
    mean(originals) - mean(style), both on the prompts that have the style and an original row (positive: the
    style does worse)."""
    original = table.style == ORIGINAL
    has_original = table.prompts_where(original)
    out = {}
    for style in styles if styles is not None else sorted(set(table.style.tolist())):
        rows = table.style == style
        if style == ORIGINAL:
            out[style] = {"mean": mean(table, weights, rows), "drop": None}
            continue
        both = (has_original & table.prompts_where(rows))[table.prompt]
        drop = None
        if both.any():
            base, styled = mean(table, weights, original & both), mean(table, weights, rows & both)
            drop = base - styled
        out[style] = {"mean": mean(table, weights, rows), "drop": drop}
    return out


def robustness_report(rows: list[dict], metric: str) -> dict:
    """Every robustness number of one model on one metric (point estimates), as stored in summary.json."""
    table = ScoreTable.from_rows(rows, metric)
    sample = np.ones((1, table.n_prompts))
    worst = gap_bucket(table.bucket)
    stats = robustness_stats(table, sample, worst)
    value = {k: None if s is None else s.value for k, s in stats.items()}
    return {
        "metric": metric,
        "n_rows": len(table.score),
        "n_prompts": table.n_prompts,
        "mean": value.pop("mean"),
        "mean_by_bucket": {b: None if s is None else s.value for b, s in mean_by_bucket(table, sample).items()},
        "bucket_gap": value.pop("gap"),
        "gap_bucket": worst,
        **value,
    }
