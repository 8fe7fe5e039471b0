"""Robustness metrics on a crafted table whose numbers are worked out by hand in the comments."""

import math

import numpy as np
import pytest

from paraphrx.eval import robustness as r

O, P = "instruction_original", "all_caps"  # noqa: E741 (Original, Paraphrase: one letter keeps the row table aligned)


def row(prompt, instruct_type, bucket, score, answer=None, source="alpaca"):
    return {
        "source": source,
        "prompt_count": prompt,
        "instruct_type": instruct_type,
        "bucket": bucket,
        "s": score,
        "answer": answer,
    }


# Prompt 1 scores [1.0, 0.8, 0.5, 0.2]; prompt 2 scores [0.6, 0.6, 0.0].
TABLE = [
    row(1, O, 1, 1.0, "72"),
    row(1, P, 1, 0.8, "72"),
    row(1, P, 3, 0.5, "72"),
    row(1, P, 5, 0.2, None),
    row(2, O, 1, 0.6, "5"),
    row(2, P, 2, 0.6, "6"),
    row(2, P, 5, 0.0, "5"),
]


def _report(rows):
    return r.robustness_report(rows, "s")


def test_mean_by_bucket_and_gap():
    means = _report(TABLE)["mean_by_bucket"]
    assert means[1] == pytest.approx((1.0 + 0.8 + 0.6) / 3)
    assert means[2] == pytest.approx(0.6) and means[3] == pytest.approx(0.5)
    assert means[4] is None
    assert means[5] == pytest.approx(0.1)
    assert _report(TABLE)["bucket_gap"] == pytest.approx(0.8 - 0.1) and _report(TABLE)["gap_bucket"] == 5
    # bucket 5 (and 4) empty: the gap is against the worst bucket that has rows, and says so
    without_5 = _report([x for x in TABLE if x["bucket"] != 5])
    assert without_5["gap_bucket"] == 3 and without_5["bucket_gap"] == pytest.approx(0.8 - 0.5)
    assert _report([x for x in TABLE if x["bucket"] == 1])["bucket_gap"] is None  # one bucket: no gap
    assert r.gap_bucket([2, 5]) is None  # no bucket 1 to measure from


def test_spread_std_and_worst_case():
    out = _report(TABLE)
    assert out["spread"] == pytest.approx((0.8 + 0.6) / 2)
    std1 = math.sqrt((0.375**2 + 0.175**2 + 0.125**2 + 0.425**2) / 4)  # mean 0.625
    std2 = math.sqrt((0.2**2 + 0.2**2 + 0.4**2) / 3)  # mean 0.4
    assert out["std"] == pytest.approx((std1 + std2) / 2)
    assert out["worst_case"] == pytest.approx((0.2 + 0.0) / 2)


def test_pdr_against_the_original_wording():
    # originals mean 0.8; paraphrases (0.8 + 0.5 + 0.2 + 0.6 + 0.0) / 5 = 0.42 -> 1 - 0.42 / 0.8
    assert _report(TABLE)["pdr"] == pytest.approx(1 - 0.42 / 0.8)
    # a prompt without an original row does not count
    assert _report(TABLE + [row(3, P, 1, 0.0)])["pdr"] == pytest.approx(1 - 0.42 / 0.8)
    assert _report([row(1, O, 1, 0.0), row(1, P, 2, 0.5)])["pdr"] is None  # undefined when originals score 0


def test_cps():
    # prompt 1: MaxP 1.0, AvgP 0.625 -> 0.625; prompt 2: MaxP 0.6, AvgP 0.4 -> 0.6 * 0.8 = 0.48
    assert _report(TABLE)["cps"] == pytest.approx((0.625 + 0.48) / 2)
    assert _report([row(1, O, 1, 1.0), row(1, P, 1, 1.0)])["cps"] == 1.0


def _sample(rows):
    table = r.ScoreTable.from_rows(rows, "s")
    return table, np.ones((1, table.n_prompts))


def test_answer_consistency():
    # prompt 1: answers 72, 72, 72, None -> 3 equal pairs of 6; prompt 2: 5, 6, 5 -> 1 of 3
    assert r.consistency(*_sample(TABLE)).value == pytest.approx((3 / 6 + 1 / 3) / 2)
    # two missing answers do not agree with each other; a single-row prompt is skipped
    single = r.consistency(*_sample([row(1, O, 1, 0, None), row(1, P, 1, 0, None), row(2, O, 1, 0, "1")]))
    assert single.value == 0.0 and single.answers == 2 and single.n_prompts == 1


def test_drop_by_style_against_the_original_on_the_same_prompts():
    rows = TABLE + [row(1, "yaml", 2, 0.4), row(3, "yaml", 2, 0.0), row(3, P, 2, 0.9)]  # prompt 3: no original
    styles = r.by_style(*_sample(rows))
    assert list(styles) == [P, O, "yaml"]
    assert styles[O]["mean"].value == pytest.approx(0.8) and styles[O]["drop"] is None
    # all_caps on prompts 1 and 2 (3 has no original): originals (1.0 + 0.6) / 2, style (0.8+0.5+0.2+0.6+0.0) / 5
    assert styles[P]["drop"].value == pytest.approx(0.8 - 0.42)
    assert styles[P]["mean"].answers == 6 and styles[P]["mean"].n_prompts == 3  # its mean counts every row
    # yaml: only prompt 1 has both -> 1.0 - 0.4, resting on one prompt
    assert styles["yaml"]["drop"].value == pytest.approx(0.6) and styles["yaml"]["drop"].n_prompts == 1
    assert r.by_style(*_sample(rows), styles=["missing"])["missing"] == {"mean": None, "drop": None}


def test_robustness_report_collects_everything_and_survives_empty_input():
    report = _report(TABLE)
    assert report["n_rows"] == 7 and report["n_prompts"] == 2
    assert report["mean"] == pytest.approx(3.7 / 7)
    assert report["bucket_gap"] == pytest.approx(0.7) and "consistency" not in report  # per source, in analysis.py
    empty = _report([])
    assert empty["mean"] is None and empty["cps"] is None and empty["worst_case"] is None
    # an answer without a score (the judge could not score it) is not a row
    assert _report(TABLE + [row(1, P, 5, None)])["n_rows"] == 7
