"""Smoke test of benchmarks/bench_eval.py on the CPU: it runs both paths and they agree (no timing asserted)."""

from benchmarks import bench_eval


def test_bench_eval_tiny_runs_both_paths_with_identical_text(capsys):
    bench_eval.main(["--tiny", "--device", "cpu", "--num_prompts", "6", "--baseline_prompts", "3", "--batch_size", "4",
                "--max_new_tokens", "4"])
    out = capsys.readouterr().out
    assert "per-example 3 prompts" in out and "batched     6 prompts, batch 4" in out
    assert "speed-up" in out
    assert "identical greedy text on the 3 shared prompts: 100%" in out
