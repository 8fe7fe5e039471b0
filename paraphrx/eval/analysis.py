"""The comparison report.md rests on: per source and reported metric, each model's statistics with bootstrap
intervals, each adapter paired against the base, the breakdown by paraphrase style, and seed averages.

A "model" here is the base or a training recipe: runs that differ only in `seed` (`paraphrx.eval.seeds`) are one
model whose numbers are the average over its seeds, with the sd across seeds and each seed's value alongside.
Every number is computed on the sample and on the same bootstrap replicates of the source's prompts
(`paraphrx.eval.bootstrap`), so differences between models are paired on the same resampled prompts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from paraphrx.buckets import BUCKETS
from paraphrx.eval.bootstrap import Stat, resampling_weights, seed_average
from paraphrx.eval.judge import JUDGE_METRIC
from paraphrx.eval.metrics import primary_metric
from paraphrx.eval.robustness import (
    ORIGINAL,
    ScoreTable,
    by_style,
    consistency,
    gap_bucket,
    mean_by_bucket,
    robustness_stats,
)

BASE = "base"
CONSISTENCY_SOURCES = ("gsm8k", "mmlu")


def report_metrics(source: str, records: list[dict]) -> list[str]:
    """The source's primary score, plus the judge's task score when the answers were judged."""
    judged = any(r.get(JUDGE_METRIC) is not None or r.get("judge_status") for r in records if r["source"] == source)
    return [primary_metric(source)] + ([JUDGE_METRIC] if judged else [])


def _map(fn: Callable, *trees):
    """fn over the leaves of equally shaped nested dicts (the leaves of the first tree decide the shape)."""
    if isinstance(trees[0], dict):
        return {k: _map(fn, *(t.get(k) if isinstance(t, dict) else None for t in trees)) for k in trees[0]}
    return fn(*trees)


def _to_json(stat: Stat | None) -> dict | None:
    return None if stat is None else stat.to_dict()


def _paired(model: Stat | None, base: Stat | None) -> dict | None:
    if model is None or base is None:
        return None
    diff = (model - base).to_dict()
    diff["excludes_zero"] = diff["ci"] is not None and (diff["ci"][0] > 0 or diff["ci"][1] < 0)
    return diff


def run_stats(table: ScoreTable, weights: np.ndarray, worst: int | None, styles: list[str], source: str) -> dict:
    """Every statistic of one run on one metric, as a tree of Stat (None where it has no rows)."""
    stats = robustness_stats(table, weights, worst)
    if source in CONSISTENCY_SOURCES:
        stats["consistency"] = consistency(table, weights)
    stats["by_bucket"] = mean_by_bucket(table, weights)
    stats["by_style"] = by_style(table, weights, styles)
    return stats


def analyse_source(
    rows: list[dict], source: str, groups: dict[str, list[str]], metrics: list[str], replicates: int, seed: int
) -> dict:
    """The analysis of one source: `rows` are every model's records of it, `groups` model name -> its runs."""
    prompts = sorted({r["prompt_count"] for r in rows})
    index = {(source, p): i for i, p in enumerate(prompts)}
    weights = resampling_weights(len(prompts), replicates, seed, stream=source)
    first_run = next(iter(groups.values()))[0]
    test_rows = [r for r in rows if r["model"] == first_run]  # every model answers the same test rows
    worst = gap_bucket(r["bucket"] for r in test_rows)
    styles = sorted({r["instruct_type"] for r in test_rows})
    bucket_rows = {}
    for b in BUCKETS:
        in_bucket = [r for r in test_rows if r["bucket"] == b]
        bucket_rows[b] = {"answers": len(in_bucket), "prompts": len({r["prompt_count"] for r in in_bucket})}
    out = {
        "prompts": len(prompts),
        "answers_per_model": len(test_rows),
        "bucket_rows": bucket_rows,
        "empty_buckets": [b for b in BUCKETS if not bucket_rows[b]["answers"]],
        "gap_bucket": worst,
        "metrics": {},
    }
    for metric in metrics:
        per_run = {}
        for members in groups.values():
            for run in members:
                table = ScoreTable.from_rows([r for r in rows if r["model"] == run], metric, index)
                per_run[run] = run_stats(table, weights, worst, styles, source)
        models = {}
        for name, members in groups.items():
            if len(members) == 1:
                models[name] = per_run[members[0]]
            else:
                models[name] = _map(
                    lambda *stats, members=members: seed_average(dict(zip(members, stats))),
                    *(per_run[m] for m in members),
                )
        base = models.get(BASE)
        vs_base = {}
        if base is not None:
            for name, tree in models.items():
                if name != BASE:
                    vs_base[name] = _map(_paired, {k: v for k, v in tree.items() if k != "by_style"}, base)
        out["metrics"][metric] = {
            "models": {name: _map(_to_json, tree) for name, tree in models.items()},
            "vs_base": vs_base,
            "style_order": style_order(models, styles),
        }
    return out


def style_order(models: dict[str, dict], styles: list[str]) -> list[str]:
    """The original wording first, then the styles by the base model's drop (the first model's without a base),
    largest drop first; styles whose drop is undefined last."""
    reference = models.get(BASE) or next(iter(models.values()))

    def drop(style: str) -> float:
        stat = reference["by_style"].get(style, {}).get("drop")
        return -np.inf if stat is None or stat.value is None else stat.value

    rest = sorted((s for s in styles if s != ORIGINAL), key=lambda s: (-drop(s), s))
    return ([ORIGINAL] if ORIGINAL in styles else []) + rest


def analyse(
    records: list[dict], models: list[str], seed_groups: dict[str, list[str]] | None, replicates: int, seed: int
) -> dict:
    """{source: analysis}: `models` are the evaluated runs, `seed_groups` the recipe names of runs that differ only
    in seed (the other runs stand alone)."""
    grouped = {run for members in (seed_groups or {}).values() for run in members}
    groups: dict[str, list[str]] = {}
    for run in models:
        if run not in grouped:
            groups[run] = [run]
        else:
            name = next(n for n, members in seed_groups.items() if run in members)
            groups.setdefault(name, [m for m in seed_groups[name] if m in models])
    out = {}
    for source in sorted({r["source"] for r in records}):
        rows = [r for r in records if r["source"] == source]
        out[source] = analyse_source(rows, source, groups, report_metrics(source, rows), replicates, seed)
    return out
