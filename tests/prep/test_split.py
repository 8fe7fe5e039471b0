"""The prompt split: seeded, disjoint, the same for every bucket range and any file or row order."""

import random

import numpy as np
import pytest

from prep.config import ConfigError, parse_split_fractions
from prep.split import TEST, TRAIN, VALIDATION, assign_sides, held_out_sizes


def _prompts(n_alpaca=12, n_gsm8k=8):
    return ["alpaca"] * n_alpaca + ["gsm8k"] * n_gsm8k, list(range(1, n_alpaca + 1)) + list(range(1, n_gsm8k + 1))


def _sides_by_key(sources, counts, fractions=(0.8, 0.1, 0.1), seed=42):
    sides = assign_sides(sources, counts, fractions, seed)
    return {(s, c): int(side) for s, c, side in zip(sources, counts, sides)}


def test_seeded_and_deterministic():
    sources, counts = _prompts()
    assert _sides_by_key(sources, counts) == _sides_by_key(sources, counts)
    assert any(_sides_by_key(sources, counts, seed=s) != _sides_by_key(sources, counts) for s in range(1, 5))


def test_independent_of_row_order():
    sources, counts = _prompts(300, 50)
    pairs = list(zip(sources, counts))
    random.Random(0).shuffle(pairs)
    assert _sides_by_key(*map(list, zip(*pairs))) == _sides_by_key(sources, counts)


def test_a_source_split_ignores_other_sources():
    sources, counts = _prompts(40, 30)
    both = _sides_by_key(sources, counts)
    alone = _sides_by_key(["alpaca"] * 40, list(range(1, 41)))
    assert {k: v for k, v in both.items() if k[0] == "alpaca"} == alone


def test_fractions_and_every_source_held_out():
    sources, counts = _prompts(1000, 200)
    sides = assign_sides(sources, counts, (0.8, 0.1, 0.1), 0)
    for source, n in (("alpaca", 1000), ("gsm8k", 200)):
        mine = sides[np.array(sources) == source]
        assert (
            (mine == TEST).sum() == n // 10
            and (mine == VALIDATION).sum() == n // 10
            and (mine == TRAIN).sum() == n * 8 // 10
        )


@pytest.mark.parametrize(
    "n, fractions, expected",
    [(12, (0.8, 0.1, 0.1), (1, 1)), (8, (0.8, 0.1, 0.1), (1, 1)), (3, (0.8, 0.1, 0.1), (1, 1)), (2, (0.8, 0.1, 0.1), (0, 1)),
     (1, (0.8, 0.1, 0.1), (0, 0)), (10, (1, 0, 0), (0, 0)), (10, (0.5, 0.5, 0), (5, 0)), (100, (0.7, 0.2, 0.1), (20, 10))],
)  # fmt: skip
def test_held_out_sizes(n, fractions, expected):
    assert held_out_sizes(n, fractions) == expected


@pytest.mark.parametrize(
    "text, expected", [("80/10/10", (0.8, 0.1, 0.1)), ("0.8,0.1,0.1", (0.8, 0.1, 0.1)), ("90/10/0", (0.9, 0.1, 0.0))]
)
def test_parse_split_fractions(text, expected):
    assert parse_split_fractions(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["80/20", "0/50/50", "80/-10/30", "a/b/c", "", "1/1/1/1", "nan/1/1", "9/1/0"])
def test_parse_split_fractions_rejects(text):
    with pytest.raises(ConfigError, match="--split"):
        parse_split_fractions(text)


@pytest.mark.parametrize("text", ["90/10/10", "0.5,0.3,0.3", "8/1/1"])
def test_a_split_that_does_not_sum_to_100_or_1_is_refused_not_rescaled(text):
    with pytest.raises(ConfigError, match=r"--split: .* sums to [0-9.]+; give percentages that sum to 100"):
        parse_split_fractions(text)


# The upstream bug: an unseeded split redone per bucket range gave each run a different test set. End to end, the
# held-out prompts must be identical whatever `--buckets` and file order are.
def test_held_out_prompts_do_not_depend_on_buckets_or_file_order(tmp_path, alpaca_path, gsm8k_path):
    from paraphrx.dataset_io import load_prepared
    from prep.cli import run
    from prep.config import PrepConfig

    def held_out(paths, buckets, name):
        out = run(
            PrepConfig(data_paths=[str(p) for p in paths], output_dir=str(tmp_path / name), buckets=buckets),
            command="test",
        )
        return {split: load_prepared(str(out), split).to_pandas() for split in ("validation", "test")}

    a = held_out([alpaca_path, gsm8k_path], ["1", "1-2", "1-3", "1-4", "1-5"], "a")
    b = held_out([gsm8k_path, alpaca_path], ["2-3"], "b")
    for split in ("validation", "test"):
        assert a[split].equals(b[split])  # same rows, same order
        assert set(a[split].source) == {"alpaca", "gsm8k"}
    assert not set(zip(a["validation"].source, a["validation"].prompt_count)) & set(
        zip(a["test"].source, a["test"].prompt_count)
    )


def test_the_demo_split_puts_every_bucket_of_the_shipped_sample_in_test(alpaca_path):
    """`make demo` preps with DEMO_PREP_ARGS: its test prompts must hold all five buckets (only prompt 10 of the
    shipped Alpaca sample has bucket-5 rows) and enough prompts for a bootstrap interval."""
    import json
    import re

    from paraphrx.recipe_cli import parse_recipe
    from prep.config import PrepConfig
    from tests.conftest import REPO

    args = re.search(r"^DEMO_PREP_ARGS \?= (.+)$", (REPO / "Makefile").read_text(), re.MULTILINE).group(1).split()
    (config,) = parse_recipe(["--data_paths", str(alpaca_path), *args], (PrepConfig,))
    prompts = json.loads(alpaca_path.read_text(encoding="utf-8"))
    counts = [p["prompt_count"] for p in prompts]
    sides = assign_sides(["alpaca"] * len(counts), counts, config.split_fractions(), config.seed)
    test = [p for p, side in zip(prompts, sides) if side == TEST]
    assert len(test) >= 3
    assert {q["bucket"] for p in test for q in p["paraphrases"]} == {1, 2, 3, 4, 5}
