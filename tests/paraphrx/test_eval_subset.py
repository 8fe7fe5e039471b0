"""The fixed evaluation subset: the same rows in every run and evaluation, every stratum, spread over prompts."""

import random
from collections import Counter

import pytest
from datasets import Dataset

from paraphrx.eval_subset import EvalSubsetError, allocate, select_eval_subset, stratum_orders


def validation_rows(prompts_per_source=(("alpaca", 30), ("gsm8k", 6)), seed=0) -> list[dict]:
    """Rows shaped like a prepared validation split: each prompt's paraphrases spread unevenly over buckets 1-5."""
    rng = random.Random(seed)
    rows = []
    for source, prompts in prompts_per_source:
        for prompt_count in range(1, prompts + 1):
            for style in range(rng.randint(8, 40) if source == "alpaca" else 11):
                rows.append(
                    {
                        "source": source,
                        "prompt_count": prompt_count,
                        "instruct_type": f"style_{style:03d}",
                        "bucket": rng.choice([1, 1, 1, 2, 2, 3, 4, 5]),
                        "prompt": f"{source} {prompt_count} {style}",
                    }
                )
    return rows


def in_buckets(rows, buckets) -> Dataset:
    return Dataset.from_list([r for r in rows if r["bucket"] in buckets])


def identities(dataset) -> list[tuple]:
    return list(zip(dataset["source"], dataset["prompt_count"], dataset["instruct_type"], dataset["bucket"]))


RANGES = [(1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), (1, 2, 3, 4, 5)]


def test_every_run_takes_a_prefix_of_each_strata_order_so_ranges_nest():
    """The five bucket-range runs score the same rows of the strata they share: each run's rows of a stratum are a
    prefix of one fixed order, so a run with more buckets (fewer rows per stratum) scores a subset of them."""
    rows = validation_rows()
    everything = identities(Dataset.from_list(rows))
    orders = {stratum: [everything[i] for i in order] for stratum, order in stratum_orders(rows, seed=42).items()}
    per_run = {}
    for buckets in RANGES:
        subset, record = select_eval_subset(in_buckets(rows, buckets), 64, seed=42)
        chosen = identities(subset)
        assert len(chosen) == record["rows"] == 64 and len(set(chosen)) == 64
        per_run[buckets] = {}
        for stratum_record in record["strata"]:
            stratum = (stratum_record["source"], stratum_record["bucket"])
            mine = [row for row in chosen if (row[0], row[3]) == stratum]
            assert len(mine) == stratum_record["rows"] >= 1
            assert set(mine) == set(orders[stratum][: len(mine)]), f"{stratum} is not a prefix of its order"
            per_run[buckets][stratum] = set(mine)
        assert {(r[0], r[3]) for r in chosen} == {(s, b) for s in ("alpaca", "gsm8k") for b in buckets}
    for narrow, wide in zip(RANGES, RANGES[1:]):
        for stratum, mine in per_run[narrow].items():
            assert per_run[wide][stratum] <= mine, f"{stratum}: {wide} is not nested in {narrow}"


def test_the_subset_does_not_depend_on_row_order_or_on_a_reload():
    rows = validation_rows()
    first, record = select_eval_subset(in_buckets(rows, (1, 2, 3, 4)), 48, seed=42)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    again, record_again = select_eval_subset(in_buckets(shuffled, (1, 2, 3, 4)), 48, seed=42)
    assert sorted(identities(first)) == sorted(identities(again))
    assert record["strata"] == record_again["strata"]
    other_seed, _ = select_eval_subset(in_buckets(rows, (1, 2, 3, 4)), 48, seed=7)
    assert sorted(identities(other_seed)) != sorted(identities(first))


def test_rows_go_round_robin_over_the_prompts_of_a_stratum():
    """One row of every prompt before a second row of any: as many prompts as the size allows."""
    rows = validation_rows()
    for size in (10, 40, 200):
        subset, record = select_eval_subset(in_buckets(rows, (1, 2)), size, seed=42)
        for stratum in record["strata"]:
            key = (stratum["source"], stratum["bucket"])
            per_prompt = Counter(p for s, p, _, b in identities(subset) if (s, b) == key)
            available = Counter(r["prompt_count"] for r in rows if (r["source"], r["bucket"]) == key)
            assert stratum["prompts"] == len(per_prompt) == min(stratum["rows"], len(available))
            # no prompt gets a second row while another with rows left has fewer
            for count in per_prompt.values():
                assert all(per_prompt.get(other, 0) >= min(count - 1, left) for other, left in available.items())


def test_rows_are_shared_in_proportion_to_the_strata_sizes():
    sizes = {("alpaca", 1): 900, ("alpaca", 2): 300, ("alpaca", 3): 90, ("gsm8k", 1): 10, ("gsm8k", 2): 1}
    shares = allocate(sizes, 130)
    assert sum(shares.values()) == 130 and shares[("gsm8k", 2)] == 1 and shares[("gsm8k", 1)] == 1
    assert shares[("alpaca", 1)] == pytest.approx(3 * shares[("alpaca", 2)], abs=2)
    assert shares[("alpaca", 2)] == pytest.approx(10 / 3 * shares[("alpaca", 3)], abs=2)
    # never more than a stratum has, and adding a stratum never gives another one more rows
    small = {("a", 1): 3, ("a", 2): 5}
    assert allocate(small, 8) == allocate(small, 50) == small
    rng = random.Random(0)
    for _ in range(200):
        sizes = {("s", b): rng.randint(1, 400) for b in range(1, rng.randint(2, 6))}
        total = rng.randint(len(sizes) + 1, 300)
        with_one_more = allocate({**sizes, ("t", 9): rng.randint(1, 400)}, total)
        assert all(with_one_more[s] <= n for s, n in allocate(sizes, total).items())


def test_too_few_rows_for_the_strata_is_an_error_and_enough_rows_keep_the_whole_split():
    validation = in_buckets(validation_rows(), (1, 2, 3, 4, 5))
    with pytest.raises(EvalSubsetError, match="eval_subset_rows: 9 rows cannot represent the 10 .source, bucket."):
        select_eval_subset(validation, 9, seed=42)
    for rows in (None, len(validation), len(validation) + 5):
        subset, record = select_eval_subset(validation, rows, seed=42)
        assert subset is validation and record["selected"] is None
        assert record["rows"] == record["of_rows"] == len(validation)
        assert record["prompts"] == record["of_prompts"] == 36
