"""Smoke run of benchmarks/bench_eval.py on the CPU (tiny Gemma-2, the tiny NF4 recipe): every part runs, the
engine answers what HF answers in float32, and the numbers it reports are consistent (no speed asserted)."""

from benchmarks import bench_eval


def test_bench_eval_tiny_runs_every_part(capsys, tmp_path):
    results = bench_eval.main(
        [
            "--tiny",
            "--device",
            "cpu",
            "--work_dir",
            str(tmp_path),
            "--today_prompts",
            "2",
            "--steady_prompts",
            "3",
            "--lever_prompts",
            "2",
            "--max_new_tokens",
            "6",
            "--fp32_tokens",
            "6",
            "--levers",
            "graphs=off,batching=static,slots=2,lora=bf16,attention=untuned",
        ]
    )
    out = capsys.readouterr().out
    for line in (
        "today       6 models x 2 prompts, batch 32",
        "ours        the same 12 answers",
        "ratio       ",
        "steady      ours, 6 models x 3 prompts",
        "  lora=bf16",
        "  attention=untuned",
        "float32     ours vs one-at-a-time",
    ):
        assert line in out
    assert results["fp32_check"] == {"identical": 6, "answers": 6}  # one prompt per model, exact in float32
    # the claims before the slow one-at-a-time references: a run stopped at its time limit keeps them
    parts = [k for k in results if k in ("today", "ours", "ratio", "steady", "agreement")]
    assert parts == ["today", "ours", "ratio", "steady", "agreement"]
    assert results["agreement"]["answers"] == 6 and results["agreement"]["cold_equals_warm"] is True
    assert results["today"]["tokens"] >= 12 and results["ratio"]["cold"] > 0
    assert set(results["levers"]) == {
        "default",
        "graphs=off",
        "batching=static",
        "slots=2",
        "lora=bf16",
        "attention=untuned",
    }
    assert (tmp_path / "outputs" / "bucket1-4" / "recipe.yaml").is_file()  # the user's setup: recipe next to adapter


def test_steady_only_measures_ours_without_todays_path(capsys, tmp_path):
    results = bench_eval.main(
        "--tiny --device cpu --steady_only --steady_prompts 3 --lever_prompts 2 --max_new_tokens 6 --fp32_tokens 6 "
        f"--levers lora=steps --work_dir {tmp_path}".split()
    )
    out = capsys.readouterr().out
    assert "steady      ours, 6 models x 3 prompts" in out and "  lora=steps" in out
    assert not {"today", "ours", "ratio", "agreement"} & results.keys()
    assert results["levers"]["lora=steps"]["agreement"] is None  # no one-at-a-time references to compare with
    assert results["fp32_check"] == {"identical": 6, "answers": 6}
