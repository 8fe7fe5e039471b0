"""The results folder: summary numbers, report tables, plots, and the all-or-nothing write."""

import json
import re

import matplotlib.image
import pytest

from paraphrx.eval import plots, report
from paraphrx.eval.judge import CRITERIA
from paraphrx.eval.metrics import score_answer

REF_GSM = "48 + 24 = 72\n#### 72"


def _records():
    rows = []
    for model, good in (("base", False), ("bucket1", True)):
        for bucket in (1, 2, 3, 4, 5):
            for prompt in (1, 2):
                kind = "instruction_original" if bucket == 1 else "typo"
                # base answers right only in buckets 1-2; the adapter everywhere
                right = good or bucket <= 2
                gen = "the cat sat on the mat" if right else "a dog"
                rows.append(
                    {
                        "model": model,
                        "source": "alpaca",
                        "prompt_count": prompt,
                        "bucket": bucket,
                        "instruct_type": kind,
                        "task_score": 5.0,
                        "prompt": f"p{prompt}-{bucket}",
                        "reference": "the cat sat on the mat",
                        "generation": gen,
                    }
                )
                gen = "so 72" if right else "so 70"
                rows.append(
                    {
                        "model": model,
                        "source": "gsm8k",
                        "prompt_count": prompt,
                        "bucket": bucket,
                        "instruct_type": kind,
                        "task_score": 5.0,
                        "prompt": f"g{prompt}-{bucket}",
                        "reference": REF_GSM,
                        "generation": gen,
                    }
                )
    return [{**r, **score_answer(r["generation"], r["reference"], r["source"])} for r in rows]


@pytest.fixture(scope="module")
def summary():
    return report.build_summary(_records(), ["base", "bucket1"], {"split": "test", "base_model": "tiny"})


def test_summary_numbers(summary):
    assert summary["sources"] == ["alpaca", "gsm8k"]
    base = summary["robustness"]["base"]
    assert base["alpaca"]["primary_metric"] == "rougeL"
    assert base["alpaca"]["metrics"]["rougeL"]["bucket_gap"] == pytest.approx(1.0)
    assert base["gsm8k"]["metrics"]["gsm8k_flexible"]["mean_by_bucket"] == {1: 1.0, 2: 1.0, 3: 0.0, 4: 0.0, 5: 0.0}
    assert summary["robustness"]["bucket1"]["gsm8k"]["metrics"]["gsm8k_flexible"]["bucket_gap"] == 0.0
    # per prompt 5 answers: 2 say 72, 3 say 70 -> (1 + 3) equal pairs of 10
    gsm8k = summary["analysis"]["gsm8k"]["metrics"]["gsm8k_flexible"]
    assert gsm8k["models"]["base"]["consistency"]["value"] == pytest.approx(4 / 10)
    assert "consistency" not in summary["analysis"]["alpaca"]["metrics"]["rougeL"]["models"]["base"]
    assert summary["scores"]["bucket1"]["alpaca"]["exact_match"] == 1.0
    assert summary["scores"]["bucket1"]["alpaca"]["corpus_bleu"] == pytest.approx(100)
    assert summary["scores"]["base"]["gsm8k"]["n"] == 10 and summary["scores"]["base"]["gsm8k"]["n_prompts"] == 2
    assert summary["bootstrap"] == {
        "unit": "prompt",
        "replicates": 1000,
        "seed": 0,
        "level": 0.95,
        "interval": "percentile",
        "min_prompts": 2,
    }
    assert summary["judge"] is None and summary["seed_groups"] == {}


def test_markdown_tables(summary):
    text = report.render_markdown(summary)
    assert "## alpaca" in text and "## gsm8k" in text
    assert "| model | bucket 1 | bucket 2 | bucket 3 | bucket 4 | bucket 5 | gap 1−5 |" in text
    # the two prompts score alike, so the intervals have no width; each cell says what it rests on
    assert "| base | 1.000 [1.000, 1.000] (2/2) | 1.000 [1.000, 1.000] (2/2) | 0.000 [0.000, 0.000] (2/2) |" in text
    assert (
        "| bucket1 | 0.000 [0.000, 0.000] (4/2) | 0.000 [0.000, 0.000] (4/2) | **1.000 [1.000, 1.000]** (4/2) |" in text
    )  # the paired table: bold where the interval excludes 0
    assert "**-1.000 [-1.000, -1.000]** (8/2) |" in text  # the adapter closed the gap
    assert "| `typo` | 0.250 / 0.750 [0.750, 0.750] (8/2) | 1.000 / 0.000 [0.000, 0.000] (8/2) |" in text
    assert "consistency" in text.split("## gsm8k")[1] and "consistency" not in text.split("## gsm8k")[0]


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"-?\d+(?:\.\d+)?", text))


def _printable(value) -> set[str]:
    """Every way report.md may print a number found in summary.json (its strings and keys included)."""
    if isinstance(value, dict):
        return set().union(*(_printable(k) | _printable(v) for k, v in value.items())) if value else set()
    if isinstance(value, list):
        return set().union(*(_printable(v) for v in value)) if value else set()
    if isinstance(value, str):
        return _numbers(value)
    if isinstance(value, bool) or value is None:
        return set()
    if isinstance(value, int):
        return {str(value)}
    return {f"{value:.3f}", f"{value:.2f}"}


def _table_numbers(text: str) -> set[str]:
    """The numbers in the body of every table (names in the first column aside) and in the prose counts."""
    found = set()
    for block in text.split("\n\n"):
        lines = block.splitlines()
        if lines and lines[0].startswith("| "):
            for line in lines[2:]:
                found |= _numbers(" | ".join(line.split(" | ")[1:]))
        elif "test prompts" in block:
            found |= _numbers(block)
    return found


def _report_numbers_are_in_the_summary(out):
    saved = json.loads((out / report.SUMMARY_FILE).read_text(encoding="utf-8"))
    printed = _table_numbers((out / report.REPORT_FILE).read_text(encoding="utf-8"))
    assert printed and printed <= _printable(saved), printed - _printable(saved)


def test_every_number_in_the_report_is_in_summary_json(tmp_path, summary):
    _report_numbers_are_in_the_summary(report.write_results(tmp_path / "run", _records(), summary))


def test_write_results_files(tmp_path, summary):
    out = report.write_results(tmp_path / "run", _records(), summary)
    lines = (out / report.GENERATIONS_FILE).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 40 and "rougeL" in json.loads(lines[0])
    saved = json.loads((out / report.SUMMARY_FILE).read_text(encoding="utf-8"))
    assert saved["robustness"]["base"]["alpaca"]["metrics"]["rougeL"]["mean_by_bucket"]["1"] == 1.0
    for plot in (report.BUCKET_PLOT, report.GAP_PLOT, report.STYLE_PLOT):
        image = matplotlib.image.imread(out / plot)
        assert image.shape[0] > 300 and image.shape[1] > 500
    text = (out / report.REPORT_FILE).read_text(encoding="utf-8")
    assert all(f"]({plot})" in text for plot in (report.BUCKET_PLOT, report.GAP_PLOT, report.STYLE_PLOT))


def test_a_failed_write_keeps_the_previous_results(tmp_path, summary, monkeypatch):
    out = report.write_results(tmp_path / "run", _records(), summary)
    before = (out / report.SUMMARY_FILE).read_text(encoding="utf-8")

    def broken(*_):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "plot_bucket_gap", broken)
    with pytest.raises(RuntimeError):
        report.write_results(tmp_path / "run", _records()[:4], summary)
    assert (out / report.SUMMARY_FILE).read_text(encoding="utf-8") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary folder left behind


def _rich_records():
    """Alpaca only, 3 prompts, no bucket 5; the base, two seeds of one recipe and a judge that fails on some."""
    rows = []
    for model, skill in (("base", 0.0), ("b14-seed1", 0.5), ("b14-seed2", 0.4)):
        for prompt in (1, 2, 3):
            for bucket, style in ((1, "instruction_original"), (2, "caps"), (4, "yaml")):
                gen = "the cat sat on the mat" if bucket == 1 or skill > 0.45 else "a dog sat"
                status = "unparseable" if (model, prompt, bucket) == ("b14-seed2", 1, 4) else "scored"
                scores = {c: 7.0 - bucket for c in CRITERIA} if status == "scored" else None
                rows.append(
                    {
                        "model": model,
                        "source": "alpaca",
                        "prompt_count": prompt,
                        "bucket": bucket,
                        "instruct_type": style,
                        "prompt": f"p{prompt}-{bucket}",
                        "generation": gen,
                        "reference": "the cat sat on the mat",
                        "judge_status": status,
                        "judge_scores": scores,
                        "judge_task": scores["task_fulfilment"] / 10 if scores else None,
                    }
                )
    return [{**r, **score_answer(r["generation"], r["reference"], r["source"])} for r in rows]


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    context = {
        "split": "test",
        "judge": {"judge": "judge-model", "rubric": "abc"},
        "seed_groups": {"b14": {"b14-seed1": 1, "b14-seed2": 2}},
    }
    records = _rich_records()
    summary = report.build_summary(records, ["base", "b14-seed1", "b14-seed2"], context, replicates=200)
    return summary, report.write_results(tmp_path_factory.mktemp("rich") / "run", records, summary)


def test_an_empty_bucket_is_named_and_the_gap_uses_the_worst_bucket_with_rows(rich):
    summary, out = rich
    text = (out / report.REPORT_FILE).read_text(encoding="utf-8")
    assert "No test rows in bucket 3, 5 for alpaca. The gap is bucket 1 − bucket 4, the worst bucket with rows." in text
    assert "| bucket 5 | gap 1−4 |" in text and "| Δ gap 1−4 |" in text
    assert summary["analysis"]["alpaca"]["gap_bucket"] == 4


def test_seeds_and_the_judge_in_the_report(rich):
    summary, out = rich
    text = (out / report.REPORT_FILE).read_text(encoding="utf-8")
    assert "| b14 (2 seeds) |" in text and "## Seeds" in text
    assert "| alpaca | ROUGE-L | b14 | b14-seed2 | 2 |" in text
    gap = summary["analysis"]["alpaca"]["metrics"]["rougeL"]["models"]["b14"]["gap"]
    assert gap["sd"] is not None and f"{gap['value']:.3f} ± {gap['sd']:.3f}" in text
    # the judge: its task score as a reported metric, its unscorable answer counted, the criteria means
    assert "### Judge task score by bucket" in text
    assert "| b14-seed2 | 9 | 8 | 1 | 0 |" in text and "| b14-seed1 | 9 | 9 | 0 | 0 |" in text
    assert summary["judge"] == {
        "judge": "judge-model",
        "rubric": "abc",
        "counts": {
            m: {
                "alpaca": {
                    "answers": 9,
                    "scored": 9 - (m == "b14-seed2"),
                    "unparseable": int(m == "b14-seed2"),
                    "failed": 0,
                }
            }
            for m in ("base", "b14-seed1", "b14-seed2")
        },
    }
    judge = summary["analysis"]["alpaca"]["metrics"]["judge_task"]["models"]["b14"]["by_bucket"][4]
    assert judge["answers"] == 5 and judge["value"] == pytest.approx(0.3)
    _report_numbers_are_in_the_summary(out)


def test_plots_show_missing_values_as_missing(rich, tmp_path, monkeypatch):
    summary, _ = rich
    figures = []
    monkeypatch.setattr(plots, "_save", lambda plt, fig, path: figures.append(fig))
    plots.plot_bucket_gap(summary, tmp_path / "gap.png")
    plots.plot_score_by_bucket(summary, tmp_path / "buckets.png")
    plots.plot_style_heatmap(summary, tmp_path / "styles.png")
    gap_axes, bucket_axes, style_axes = (fig.axes for fig in figures)
    # one panel per reported metric (ROUGE-L, judge); two models (the seeds are one), two bars with error bars
    assert len(gap_axes) == 2 and len(gap_axes[0].patches) == 2 and gap_axes[0].containers
    assert "bucket 1 − bucket 4" in gap_axes[0].get_title()
    # no point for the empty buckets 3 and 5
    xs = {round(x) for line in bucket_axes[0].lines for x in line.get_xdata()}
    assert xs == {1, 2, 4}
    # the heat map: two styles (the original is the reference) x two models
    assert style_axes[0].images[0].get_array().shape == (2, 2)
    # a model without a gap gets a label, not a zero-height bar
    import copy

    broken = copy.deepcopy(summary)
    broken["analysis"]["alpaca"]["metrics"]["rougeL"]["models"]["base"]["gap"] = None
    figures.clear()
    plots.plot_bucket_gap(broken, tmp_path / "gap.png")
    ax = figures[0].axes[0]
    assert len(ax.patches) == 1 and any(t.get_text() == "no data" for t in ax.texts)
