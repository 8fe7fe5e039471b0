"""The cluster bootstrap over prompts: the vectorised replicates equal a naive resample-and-recompute, intervals
need two prompts, pairing removes the between-prompt spread, seed averages keep each seed."""

import numpy as np
import pytest

from paraphrx.eval import robustness as r
from paraphrx.eval.bootstrap import Stat, resampling_weights, seed_average


def test_weights_are_seeded_counts_of_prompts_drawn_with_replacement():
    weights = resampling_weights(7, 500, seed=3, stream="alpaca")
    assert weights.shape == (501, 7)
    assert (weights[0] == 1).all()  # row 0: the sample itself
    assert (weights[1:].sum(axis=1) == 7).all() and (weights >= 0).all()
    assert np.array_equal(weights, resampling_weights(7, 500, seed=3, stream="alpaca"))  # reproducible
    assert not np.array_equal(weights, resampling_weights(7, 500, seed=4, stream="alpaca"))
    assert not np.array_equal(weights, resampling_weights(7, 500, seed=3, stream="gsm8k"))  # each source its own
    # every prompt is drawn about once per replicate on average
    assert weights[1:].mean(axis=0) == pytest.approx(np.ones(7), abs=0.15)


def _rows(scores_by_prompt: dict[int, list[tuple[int, float]]]) -> list[dict]:
    return [
        {"source": "alpaca", "prompt_count": p, "bucket": b, "instruct_type": "x", "s": s}
        for p, rows in scores_by_prompt.items()
        for b, s in rows
    ]


ROWS = _rows(
    {
        1: [(1, 1.0), (1, 0.8), (5, 0.1)],
        2: [(1, 0.4), (2, 0.6), (5, 0.0), (5, 0.2)],
        3: [(1, 0.9), (3, 0.3)],
        4: [(1, 0.2), (5, 0.6), (2, 0.5)],
    }
)


def _naive(rows: list[dict], counts: np.ndarray, statistic) -> float:
    """Materialise the resample (prompt i repeated counts[i] times, each copy its own prompt) and recompute."""
    resampled = []
    for i, count in enumerate(counts):
        for copy in range(int(count)):
            resampled += [{**row, "prompt_count": (i, copy)} for row in rows if row["prompt_count"] == i + 1]
    return statistic(resampled)


def test_vectorised_replicates_equal_recomputing_on_each_resample():
    table = r.ScoreTable.from_rows(ROWS, "s")
    weights = resampling_weights(table.n_prompts, 40, seed=0)
    stats = r.robustness_stats(table, weights, worst=5)
    for row, counts in enumerate(weights[1:], start=1):
        report = _naive(ROWS, counts, lambda rows: r.robustness_report(rows, "s"))
        for key, name in [
            ("mean", "mean"),
            ("gap", "bucket_gap"),
            ("worst_case", "worst_case"),
            ("cps", "cps"),
            ("spread", "spread"),
            ("std", "std"),
        ]:
            expected = report[name]
            got = stats[key].values[row]
            assert (expected is None and np.isnan(got)) or got == pytest.approx(expected), (key, counts)


def test_percentile_interval_and_the_two_prompt_minimum():
    table = r.ScoreTable.from_rows(ROWS, "s")
    weights = resampling_weights(table.n_prompts, 1000, seed=1)
    mean = r.mean(table, weights)
    low, high = mean.interval()
    assert low == pytest.approx(np.percentile(mean.values[1:], 2.5))
    assert high == pytest.approx(np.percentile(mean.values[1:], 97.5))
    assert low < mean.value < high
    # bucket 3 rests on one prompt: a value, but no interval (one prompt says nothing about between-prompt spread)
    bucket3 = r.mean(table, weights, table.bucket == 3)
    assert bucket3.value == pytest.approx(0.3) and bucket3.n_prompts == 1 and bucket3.interval() is None
    assert (r.bucket_gap(table, weights, worst=3)).interval() is None
    assert r.bucket_gap(table, weights, worst=5).interval() is not None
    assert mean.to_dict() == {"value": pytest.approx(5.6 / 12), "ci": [low, high], "answers": 12, "prompts": 4}


def test_replicates_that_drew_none_of_a_statistics_rows_are_left_out():
    table = r.ScoreTable.from_rows(ROWS, "s")
    weights = resampling_weights(table.n_prompts, 300, seed=2)
    bucket2 = r.mean(table, weights, table.bucket == 2)  # prompts 2 and 4 only
    undefined = np.isnan(bucket2.values[1:])
    assert undefined.any() and np.array_equal(undefined, (weights[1:, 1] == 0) & (weights[1:, 3] == 0))
    low, high = bucket2.interval()
    assert 0.5 <= low <= high <= 0.6


def test_pairing_on_the_same_prompts_removes_the_spread_between_prompts():
    # prompts differ a lot, but the adapter is exactly 0.1 better on every row: the paired difference is certain
    base_rows = _rows({p: [(1, 0.1 * p), (5, 0.05 * p)] for p in range(1, 7)})
    adapter_rows = [{**row, "s": row["s"] + 0.1} for row in base_rows]
    weights = resampling_weights(6, 500, seed=0)
    base = r.mean(r.ScoreTable.from_rows(base_rows, "s"), weights)
    adapter = r.mean(r.ScoreTable.from_rows(adapter_rows, "s"), weights)
    diff = adapter - base
    assert diff.value == pytest.approx(0.1) and diff.interval() == pytest.approx((0.1, 0.1))
    assert base.interval()[1] - base.interval()[0] > 0.1  # each model alone is uncertain
    assert diff.answers == 24 and diff.n_prompts == 6


def test_seed_average_keeps_each_seed_and_bootstraps_the_average():
    weights = resampling_weights(4, 200, seed=0)
    tables = {
        f"run-seed{i}": r.ScoreTable.from_rows([{**row, "s": row["s"] * i / 2} for row in ROWS], "s") for i in (1, 2, 3)
    }
    stats = {run: r.mean(t, weights) for run, t in tables.items()}
    average = seed_average({**stats, "run-seed4": None})
    assert average.value == pytest.approx(np.mean([s.value for s in stats.values()]))
    assert np.allclose(average.values, np.mean([s.values for s in stats.values()], axis=0))
    out = average.to_dict()
    assert out["per_seed"] == {**{run: pytest.approx(s.value) for run, s in stats.items()}, "run-seed4": None}
    assert out["sd"] == pytest.approx(np.std([s.value for s in stats.values()], ddof=1))
    assert out["answers"] == 36 and out["prompts"] == 4
    # against a single run, each seed keeps its own difference
    base = r.mean(tables["run-seed1"], weights)
    diff = (average - base).to_dict()
    assert diff["per_seed"]["run-seed2"] == pytest.approx(stats["run-seed2"].value - base.value)
    assert seed_average({"a": None}) is None


def test_a_stat_without_rows_is_none_and_an_undefined_value_has_no_interval():
    table = r.ScoreTable.from_rows(ROWS, "s")
    weights = resampling_weights(table.n_prompts, 50, seed=0)
    assert r.mean(table, weights, table.bucket == 4) is None
    nan = Stat(np.full(51, np.nan), 3, np.ones(4, dtype=bool), 4)
    assert nan.value is None and nan.interval() is None
