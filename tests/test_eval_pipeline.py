"""evaluate_paraphrx.py end to end on the tiny model: report files, the cache, re-scoring, recipes, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset
from test_eval_generation import make_adapter

import evaluate_paraphrx
from paraphrx.eval import pipeline
from paraphrx.eval.config import EvalArguments, EvalModelConfig
from paraphrx.eval.pipeline import EvalError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    return [make_adapter(tiny_model_dir, root / "tiny-bucket1", 1), make_adapter(tiny_model_dir, root / "tiny-bucket1-2", 2)]


def _argv(tmp_path, dataset, adapters, *extra):
    return ["--dataset", str(dataset), "--adapters", *map(str, adapters), "--dtype", "float32",
            "--max_new_tokens", "6", "--max_paraphrases_per_prompt", "6", "--batch_size", "4",
            "--output_dir", str(tmp_path / "eval"), "--output_name", "run", "--cache_dir", str(tmp_path / "cache"),
            "--log_dir", str(tmp_path / "logs"), *extra]


def test_end_to_end_report_cache_and_rescoring(tmp_path, prepared_dataset_dir, adapters, monkeypatch):
    assert evaluate_paraphrx.main(_argv(tmp_path, prepared_dataset_dir, adapters)) == 0
    out = tmp_path / "eval" / "run"
    assert sorted(p.name for p in out.iterdir()) == [
        "bucket_gap.png", "generations.jsonl", "report.md", "score_by_bucket.png", "summary.json"]
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["models"] == ["base", "tiny-bucket1", "tiny-bucket1-2"]
    assert summary["sources"] == ["alpaca", "gsm8k"]  # the test split holds one held-out prompt of each
    per_model = len(records) // 3
    assert 2 <= per_model <= 12 and len(records) == 3 * per_model  # 6 paraphrases at most per prompt
    by_model = {m: [r["generation"] for r in records if r["model"] == m] for m in summary["models"]}
    assert by_model["tiny-bucket1"] != by_model["base"]  # the adapters were really applied
    assert all("rougeL" in r and r["prompt"] for r in records)
    assert all("gsm8k_flexible" in r for r in records if r["source"] == "gsm8k")
    assert sum(r["instruct_type"] == "instruction_original" for r in records) == 3 * 2  # the original is kept
    assert summary["run"]["settings"]["dtype"] == "float32"
    assert "| tiny-bucket1-2 |" in (out / "report.md").read_text(encoding="utf-8")

    # Second run: everything is cached, so no model may be loaded; same answers.
    def no_model(*_):
        raise AssertionError("loaded a model although every answer was cached")

    monkeypatch.setattr(pipeline, "load_base_model", no_model)
    assert evaluate_paraphrx.main(_argv(tmp_path, prepared_dataset_dir, adapters)) == 0
    again = [json.loads(line) for line in (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["generation"] for r in again] == [r["generation"] for r in records]

    # Re-scoring only: edit one stored answer into the reference; its scores follow, nothing is generated.
    again[0]["generation"] = again[0]["reference"]
    (out / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in again), encoding="utf-8")
    assert evaluate_paraphrx.main(_argv(tmp_path, prepared_dataset_dir, adapters, "--recompute_metrics_only")) == 0
    rescored = json.loads((out / "generations.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert rescored["exact_match"] == 1.0 and rescored["rougeL"] == pytest.approx(1.0)
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["run"]["recomputed"] is True


def test_recipe_yaml_decides_how_the_base_is_loaded(tmp_path, tiny_model_dir, adapters):
    for adapter in adapters:
        (adapter / "recipe.yaml").write_text("dtype: float32\nload_in_4bit: true\nuse_bnb_nested_quant: true\n"
                                             "learning_rate: 0.0002\n")
    try:
        args = pipeline.resolve_model_config(EvalModelConfig(), {a.name: a for a in adapters}, use_recipe=True)
        assert args.model_name_or_path == str(tiny_model_dir)  # from adapter_config.json
        assert (args.load_in_4bit, args.use_bnb_nested_quant, args.dtype) == (True, True, "float32")
        plain = pipeline.resolve_model_config(EvalModelConfig(), {a.name: a for a in adapters}, use_recipe=False)
        assert plain.load_in_4bit is False and plain.dtype == "bfloat16"
        (adapters[1] / "recipe.yaml").write_text("load_in_4bit: false\n")
        with pytest.raises(EvalError, match="recipe.yaml: model keys"):
            pipeline.resolve_model_config(EvalModelConfig(), {a.name: a for a in adapters}, use_recipe=True)
        with pytest.raises(EvalError, match="field 'base_model_name_or_path'"):
            pipeline.resolve_model_config(EvalModelConfig(model_name_or_path="other/model"),
                                          {a.name: a for a in adapters}, use_recipe=False)
    finally:
        for adapter in adapters:
            (adapter / "recipe.yaml").unlink()


def test_quick_run_selection_keeps_the_original_and_every_bucket():
    rows = [{"source": "alpaca", "prompt_count": p, "bucket": b, "instruct_type": t}
            for p in (2, 1) for b, t in [(3, "x"), (3, "y"), (1, "z"), (5, "w"), (2, "instruction_original")]]
    rows.append({"source": "gsm8k", "prompt_count": 9, "bucket": 1, "instruct_type": "x"})
    picked = pipeline.select_rows(rows, max_prompts=1, max_per_prompt=4)
    assert [(r["source"], r["prompt_count"]) for r in picked] == [("alpaca", 1)] * 4 + [("gsm8k", 9)]
    assert [(r["bucket"], r["instruct_type"]) for r in picked[:4]] == [
        (2, "instruction_original"), (1, "z"), (3, "x"), (5, "w")]


def _write_prepared(folder: Path, rows: list[dict]) -> Path:
    (folder / "data").mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: test\n"
                                      "    path: data/test-*.parquet\n---\n", encoding="utf-8")
    return folder


def test_bad_rows_name_the_row_and_field(tmp_path):
    row = {"prompt": "p", "completion": "c", "reference": "r", "source": "alpaca", "prompt_count": 1,
           "instruct_type": "instruction_original", "paraphrase": "p", "input": "", "bucket": 1, "task_score": 9.0}
    folder = _write_prepared(tmp_path / "bad", [row, {**row, "bucket": 7}])
    with pytest.raises(EvalError, match=r"split 'test' row 1: field 'bucket' is 7, expected 1..5"):
        pipeline.load_rows(EvalArguments(dataset=str(folder)))
    with pytest.raises(EvalError, match="split 'nope'"):
        pipeline.load_rows(EvalArguments(dataset=str(folder), split="nope"))


def test_cli_bad_input_is_one_line_without_traceback(tmp_path):
    not_an_adapter = tmp_path / "outputs" / "bucket1"
    not_an_adapter.mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "evaluate_paraphrx.py", "--adapters", str(not_an_adapter), "--log_dir", str(tmp_path / "l"),
         "--output_dir", str(tmp_path / "eval")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"{not_an_adapter}: no adapter_config.json" in errors[0]
    assert not (tmp_path / "eval").exists()  # nothing half-written
