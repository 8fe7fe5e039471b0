"""The results folder: summary numbers, report tables, plots, and the all-or-nothing write."""

import json

import matplotlib.image
import pytest

from paraphrx.eval import report
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
                rows.append({"model": model, "source": "alpaca", "prompt_count": prompt, "bucket": bucket,
                             "instruct_type": kind, "task_score": 5.0, "prompt": f"p{prompt}-{bucket}",
                             "reference": "the cat sat on the mat", "generation": gen})
                gen = "so 72" if right else "so 70"
                rows.append({"model": model, "source": "gsm8k", "prompt_count": prompt, "bucket": bucket,
                             "instruct_type": kind, "task_score": 5.0, "prompt": f"g{prompt}-{bucket}",
                             "reference": REF_GSM, "generation": gen})
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
    assert base["gsm8k"]["consistency"] == pytest.approx(4 / 10)
    assert base["alpaca"]["consistency"] is None
    assert summary["scores"]["bucket1"]["alpaca"]["exact_match"] == 1.0
    assert summary["scores"]["bucket1"]["alpaca"]["corpus_bleu"] == pytest.approx(100)
    assert summary["scores"]["base"]["gsm8k"]["n"] == 10


def test_markdown_tables(summary):
    text = report.render_markdown(summary)
    assert "## alpaca" in text and "## gsm8k" in text
    assert "| model | bucket 1 | bucket 2 | bucket 3 | bucket 4 | bucket 5 | gap 1−5 |" in text
    assert "| base | 1.000 | 1.000 | 0.000 | 0.000 | 0.000 | 1.000 |" in text
    assert "| bucket1 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 0.000 |" in text
    assert "consistency" in text.split("## gsm8k")[1] and "consistency" not in text.split("## gsm8k")[0]


def test_write_results_files(tmp_path, summary):
    out = report.write_results(tmp_path / "run", _records(), summary)
    lines = (out / report.GENERATIONS_FILE).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 40 and "rougeL" in json.loads(lines[0])
    saved = json.loads((out / report.SUMMARY_FILE).read_text(encoding="utf-8"))
    assert saved["robustness"]["base"]["alpaca"]["metrics"]["rougeL"]["mean_by_bucket"]["1"] == 1.0
    for plot in (report.BUCKET_PLOT, report.GAP_PLOT):
        image = matplotlib.image.imread(out / plot)
        assert image.shape[0] > 300 and image.shape[1] > 500
    assert f"]({report.BUCKET_PLOT})" in (out / report.REPORT_FILE).read_text(encoding="utf-8")


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
