"""The comparison across models: seed averages, paired differences against the base, the gap bucket, styles and
the judge's score with its unscorable answers left out but counted."""

import pytest

from paraphrx.eval.analysis import analyse, report_metrics

STYLES = {"instruction_original": 1, "caps": 2, "typo": 3, "yaml": 4}  # style -> bucket; bucket 5 has no rows
BASE_SCORES = {"instruction_original": 0.9, "caps": 0.7, "typo": 0.5, "yaml": 0.1}


def _records(model: str, scores: dict[str, float], prompts=range(1, 7), **extra) -> list[dict]:
    # prompt p shifts every score by 0.01 * p: prompts differ, so intervals have width
    return [
        {
            "model": model,
            "source": "alpaca",
            "prompt_count": p,
            "bucket": bucket,
            "instruct_type": style,
            "rougeL": scores[style] + 0.01 * p,
            **extra,
        }
        for p in prompts
        for style, bucket in STYLES.items()
    ]


def _adapter(seed_offset: float) -> dict[str, float]:
    return {"instruction_original": 0.9, "caps": 0.85, "typo": 0.8, "yaml": 0.7 + seed_offset}


RECORDS = (
    _records("base", BASE_SCORES)
    + _records("b14-seed1", _adapter(0.0))
    + _records("b14-seed2", _adapter(0.1))
    + _records("b1", BASE_SCORES)
)
GROUPS = {"b14": {"b14-seed1": 1, "b14-seed2": 2}}


@pytest.fixture(scope="module")
def alpaca():
    return analyse(RECORDS, ["base", "b14-seed1", "b14-seed2", "b1"], GROUPS, replicates=400, seed=0)["alpaca"]


def test_the_gap_uses_the_worst_bucket_with_rows_and_says_which(alpaca):
    assert alpaca["empty_buckets"] == [5] and alpaca["gap_bucket"] == 4
    assert alpaca["bucket_rows"][4] == {"answers": 6, "prompts": 6} and alpaca["bucket_rows"][5]["answers"] == 0
    base = alpaca["metrics"]["rougeL"]["models"]["base"]
    assert base["gap"]["value"] == pytest.approx(0.9 - 0.1) and base["by_bucket"][5] is None
    assert base["gap"]["answers"] == 12 and base["gap"]["prompts"] == 6


def test_seeds_are_averaged_with_their_sd_and_each_seed_kept(alpaca):
    models = alpaca["metrics"]["rougeL"]["models"]
    assert list(models) == ["base", "b14", "b1"]  # the two seeds are one model
    gap = models["b14"]["gap"]
    assert gap["per_seed"] == {"b14-seed1": pytest.approx(0.2), "b14-seed2": pytest.approx(0.1)}
    assert gap["value"] == pytest.approx(0.15) and gap["sd"] == pytest.approx(0.0707107, abs=1e-6)
    assert gap["answers"] == 24 and gap["prompts"] == 6
    assert "sd" not in models["base"]["gap"]


def test_adapters_are_paired_against_the_base_on_the_same_prompts(alpaca):
    vs_base = alpaca["metrics"]["rougeL"]["vs_base"]
    assert list(vs_base) == ["b14", "b1"]
    closed = vs_base["b14"]["gap"]
    assert closed["value"] == pytest.approx(0.15 - 0.8)
    # the per-prompt shift is the same in both models, so the paired difference has no spread at all...
    assert closed["ci"] == pytest.approx([-0.65, -0.65]) and closed["excludes_zero"] is True
    assert closed["per_seed"] == {"b14-seed1": pytest.approx(-0.6), "b14-seed2": pytest.approx(-0.7)}
    # ...while one model's mean varies with the prompts drawn
    base_mean = alpaca["metrics"]["rougeL"]["models"]["base"]["mean"]
    assert base_mean["ci"][0] < base_mean["value"] < base_mean["ci"][1]
    same = vs_base["b1"]["mean"]  # a model answering like the base differs by exactly zero: not marked
    assert same["value"] == pytest.approx(0.0) and same["excludes_zero"] is False
    assert "by_style" not in vs_base["b14"]


def test_styles_sorted_by_the_base_models_drop(alpaca):
    result = alpaca["metrics"]["rougeL"]
    assert result["style_order"] == ["instruction_original", "yaml", "typo", "caps"]
    yaml = result["models"]["base"]["by_style"]["yaml"]
    assert yaml["drop"]["value"] == pytest.approx(0.8) and yaml["mean"]["answers"] == 6
    assert result["models"]["b14"]["by_style"]["yaml"]["drop"]["value"] == pytest.approx(0.9 - 0.75)
    assert result["models"]["base"]["by_style"]["instruction_original"]["drop"] is None


def test_the_judge_score_is_reported_on_the_scored_answers_only():
    records = []
    for r in _records("base", BASE_SCORES) + _records("b1", _adapter(0.0)):
        # the judge could not score the adapter's yaml answers of prompts 1-3
        unscorable = r["model"] == "b1" and r["instruct_type"] == "yaml" and r["prompt_count"] <= 3
        records.append(
            {
                **r,
                "judge_status": "unparseable" if unscorable else "scored",
                "judge_task": None if unscorable else r["rougeL"] / 2,
            }
        )
    assert report_metrics("alpaca", records) == ["rougeL", "judge_task"]
    assert report_metrics("alpaca", _records("base", BASE_SCORES)) == ["rougeL"]
    result = analyse(records, ["base", "b1"], None, replicates=100, seed=0)["alpaca"]["metrics"]["judge_task"]
    yaml_bucket = result["models"]["b1"]["by_bucket"][4]
    assert yaml_bucket["answers"] == 3 and yaml_bucket["prompts"] == 3
    assert yaml_bucket["value"] == pytest.approx((0.7 + 0.05) / 2)  # prompts 4-6: 0.74, 0.75, 0.76 -> /2
    assert result["models"]["b1"]["mean"]["answers"] == 21 and result["models"]["base"]["mean"]["answers"] == 24
