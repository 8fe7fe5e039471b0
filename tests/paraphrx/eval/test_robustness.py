"""Robustness metrics on a crafted table whose numbers are worked out by hand in the comments."""

import math

import pytest

from paraphrx.eval import robustness as r

O, P = "instruction_original", "all_caps"  # noqa: E741 (Original, Paraphrase: one letter keeps the row table aligned)


def row(prompt, instruct_type, bucket, score, answer=None, source="alpaca"):
    return {"source": source, "prompt_count": prompt, "instruct_type": instruct_type, "bucket": bucket,
            "s": score, "answer": answer}


# Prompt 1 scores [1.0, 0.8, 0.5, 0.2]; prompt 2 scores [0.6, 0.6, 0.0].
TABLE = [
    row(1, O, 1, 1.0, "72"), row(1, P, 1, 0.8, "72"), row(1, P, 3, 0.5, "72"), row(1, P, 5, 0.2, None),
    row(2, O, 1, 0.6, "5"), row(2, P, 2, 0.6, "6"), row(2, P, 5, 0.0, "5"),
]


def test_mean_by_bucket_and_gap():
    means = r.mean_by_bucket(TABLE, "s")
    assert means[1] == pytest.approx((1.0 + 0.8 + 0.6) / 3)
    assert means[2] == pytest.approx(0.6) and means[3] == pytest.approx(0.5)
    assert means[4] is None
    assert means[5] == pytest.approx(0.1)
    assert r.bucket_gap(TABLE, "s") == pytest.approx(0.8 - 0.1)
    assert r.bucket_gap([x for x in TABLE if x["bucket"] != 5], "s") is None


def test_spread_std_and_worst_case():
    out = r.spread(TABLE, "s")
    assert out["spread"] == pytest.approx((0.8 + 0.6) / 2)
    std1 = math.sqrt((0.375**2 + 0.175**2 + 0.125**2 + 0.425**2) / 4)  # mean 0.625
    std2 = math.sqrt((0.2**2 + 0.2**2 + 0.4**2) / 3)  # mean 0.4
    assert out["std"] == pytest.approx((std1 + std2) / 2)
    assert r.worst_case(TABLE, "s") == pytest.approx((0.2 + 0.0) / 2)


def test_pdr_against_the_original_wording():
    # originals mean 0.8; paraphrases (0.8 + 0.5 + 0.2 + 0.6 + 0.0) / 5 = 0.42 -> 1 - 0.42 / 0.8
    assert r.pdr(TABLE, "s") == pytest.approx(1 - 0.42 / 0.8)
    # a prompt without an original row does not count
    assert r.pdr(TABLE + [row(3, P, 1, 0.0)], "s") == pytest.approx(1 - 0.42 / 0.8)
    assert r.pdr([row(1, O, 1, 0.0), row(1, P, 2, 0.5)], "s") is None  # undefined when originals score 0


def test_cps():
    # prompt 1: MaxP 1.0, AvgP 0.625 -> 0.625; prompt 2: MaxP 0.6, AvgP 0.4 -> 0.6 * 0.8 = 0.48
    assert r.cps(TABLE, "s") == pytest.approx((0.625 + 0.48) / 2)
    assert r.cps([row(1, O, 1, 1.0), row(1, P, 1, 1.0)], "s") == 1.0


def test_answer_consistency():
    # prompt 1: answers 72, 72, 72, None -> 3 equal pairs of 6; prompt 2: 5, 6, 5 -> 1 of 3
    assert r.consistency(TABLE) == pytest.approx((3 / 6 + 1 / 3) / 2)
    # two missing answers do not agree with each other; a single-row prompt is skipped
    assert r.consistency([row(1, O, 1, 0, None), row(1, P, 1, 0, None), row(2, O, 1, 0, "1")]) == 0.0


def test_robustness_report_collects_everything_and_survives_empty_input():
    report = r.robustness_report(TABLE, "s")
    assert report["n_rows"] == 7 and report["n_prompts"] == 2
    assert report["mean"] == pytest.approx(3.7 / 7)
    assert report["bucket_gap"] == pytest.approx(0.7) and "consistency" not in report  # per source, in report.py
    empty = r.robustness_report([], "s")
    assert empty["mean"] is None and empty["cps"] is None and empty["worst_case"] is None
