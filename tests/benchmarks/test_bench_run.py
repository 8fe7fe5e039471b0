"""benchmarks/bench_run.py: phases from a timeline, and its smoke mode on the CPU with all three configurations."""

import argparse
import shutil
import sys

import pytest

from benchmarks import bench_run, phase_timer
from tests.conftest import REPO


def test_phases_split_the_wall_time_by_what_ran_when():
    """Launch at 0, first step ends at 30, last at 70; evaluations at 40-45 and 70-73 (scheduled), 75-85 (whole
    split); saves 45-47 and 73-74 with a nested save_model call recorded once; exit at 90."""
    timeline = {
        "first_step_end": 30.0,
        "last_step_end": 70.0,
        "steps": 40,
        "max_steps": 40,
        "train_tokens": 41_000,
        "first_step_tokens": 1_000,
        "intervals": [
            {
                "kind": "evaluate",
                "prefix": "eval",
                "start": 40.0,
                "end": 45.0,
                "rows": 64,
                "tokens": 12_800,
                "loss": 2.5,
                "compiles_before": 3,
                "compiles_after": 5,
            },
            {"kind": "save", "start": 45.0, "end": 47.0, "compiles_before": 5, "compiles_after": 5},
            {
                "kind": "evaluate",
                "prefix": "eval",
                "start": 70.0,
                "end": 73.0,
                "rows": 64,
                "tokens": 12_800,
                "loss": 2.0,
                "compiles_before": 6,
                "compiles_after": 6,
            },
            {"kind": "save", "start": 73.0, "end": 74.0, "compiles_before": 6, "compiles_after": 6},
            {
                "kind": "evaluate",
                "prefix": "eval_full",
                "start": 75.0,
                "end": 85.0,
                "rows": 2_000,
                "tokens": 400_000,
                "loss": 2.1,
                "compiles_before": 6,
                "compiles_after": 8,
            },
        ],
        "compiles_at": {"first_step_end": 3, "last_step_end": 6},
        "compiles_at_exit": 8,
        "recompiles": [{"time": 20.0, "reason": "a"}, {"time": 50.0, "reason": "b"}, {"time": 80.0, "reason": "c"}],
        "marks": {
            "script_start": 0.5,
            "model_load_start": 6.0,
            "model_load_end": 10.0,
            "trainer_init_start": 11.0,
            "trainer_init_end": 15.0,
            "train_begin": 16.0,
        },
        "dataset_prep_s": 2.5,
        "peak_gpu_gib": None,
        "tree": "/x",
        "paraphrx_imported_from": "/x/paraphrx",
    }
    r = bench_run.summarize("ours", timeline, launched=0.0, ended=90.0)
    assert r["phases_s"] == {
        "startup": 30.0,
        "training": 33.0,
        "evaluation": 8.0,
        "final_eval": 10.0,
        "saving": 3.0,
        "other": 6.0,
    }
    assert sum(r["phases_s"].values()) == r["wall_s"] == 90.0 and sum(r["shares"].values()) == pytest.approx(1.0)
    assert r["evaluations"] == 2 and r["eval_rows"] == [64, 64] and r["saves"] == 2 and r["final_eval_rows"] == 2_000
    assert r["eval_s"] == [5.0, 3.0]
    assert r["eval_rows_per_s"] == pytest.approx(128 / 8) and r["eval_tokens_per_s"] == pytest.approx(25_600 / 8)
    assert r["final_eval_tokens_per_s"] == pytest.approx(40_000)
    assert r["train_tokens_per_s"] == pytest.approx(40_000 / 33)  # the first step's tokens belong to start-up
    # 3 frames compiled before the first step ended, 2 in the first evaluation, 1 during training, 2 at the end
    assert r["compiled_frames"] == {
        "startup": 3,
        "training": 1,
        "evaluation": 2,
        "final_eval": 2,
        "saving": 0,
        "other": 0,
    }
    assert r["recompiles"] == {"startup": 1, "training": 1, "evaluation": 0, "final_eval": 1, "saving": 0, "other": 0}
    assert r["recompiles_after_first_step"] == 2 and r["recompile_reasons_after_first_step"] == ["b", "c"]
    # start-up (launch at 0 -> first step end at 30) split at the marks
    assert r["startup_s"] == {
        "to_model_load": 6.0,
        "model_load": 4.0,
        "to_trainer": 1.0,
        "trainer_init": 4.0,
        "to_train": 1.0,
        "first_step": 14.0,
        "dataset_prep": 2.5,
    }
    assert sum(v for k, v in r["startup_s"].items() if k != "dataset_prep") == r["phases_s"]["startup"]


def test_the_phase_timer_counts_compiled_frames_and_compile_time_and_recompilations_with_their_reasons():
    import logging

    import torch

    handler = phase_timer.watch_recompiles()
    try:
        before, seconds_before = phase_timer.compiled_frames(), phase_timer.compile_seconds()
        double = torch.compile(lambda x: x * 2, backend="eager", dynamic=False)
        for n in (3, 4, 5):  # a static graph per new length: two recompilations
            double(torch.ones(n))
        assert phase_timer.compiled_frames() - before == 3
        seconds = phase_timer.compile_seconds()  # dynamo's timers, accumulated over the process
        assert seconds["total"] > seconds_before.get("total", 0) and 0 < seconds["tracing"] <= seconds["total"]
        reasons = [r["reason"] for r in phase_timer.TIMELINE.recompiles]
        assert len(reasons) == 2 and all("Recompiling function" in r and "size mismatch" in r for r in reasons)
    finally:
        logging.getLogger("torch._dynamo.guards.__recompiles").removeHandler(handler)
        torch._logging.set_logs()
        torch._dynamo.reset()


def test_the_trl_configuration_is_a_valid_recipe_with_trls_knobs():
    from paraphrx.recipe_cli import parse_recipe

    args = bench_run.trl_overrides(on_gpu=False, examples_per_step=16)
    _, training_args, _ = parse_recipe([str(REPO / "recipes" / "bucket1-4.yaml"), "--use_cpu", "true", *args])
    assert training_args.fast_path == "off" and training_args.padding_free and training_args.max_length is None
    assert (training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps) == (16, 1)
    assert not training_args.gradient_checkpointing


def test_the_warm_run_is_make_train_alls_next_recipe_on_the_first_runs_caches(tmp_path):
    args = argparse.Namespace(max_steps=4, before_max_steps=None, trl_max_steps=None, configs="ours,ours_warm")
    commands = {
        config: bench_run.command(config, REPO, "recipes/bucket1-4.yaml", args, tmp_path, tmp_path / "d", tmp_path)
        for config in ("ours", "ours_warm")
    }
    assert str(REPO / "recipes/bucket1-4.yaml") in commands["ours"]
    assert str(REPO / "recipes/bucket1-5.yaml") in commands["ours_warm"]


def test_smoke_mode_times_every_configuration(tiny_model_dir, tmp_path, capsys):
    """--tiny --device cpu: ours (6 steps: checkpoints 5 and 6), ours_resume (from checkpoint 5), trl and `before`
    (a copy of this checkout; 2 steps each) run train_sft.py to the end."""
    before = tmp_path / "before"
    for name in ("paraphrx", "prep", "recipes"):
        shutil.copytree(REPO / name, before / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "train_sft.py", before / "train_sft.py")
    argv = "--tiny --device cpu --max_steps 6 --trl_max_steps 2 --before_max_steps 2 --timeout 600 --configs "
    argv += f"ours,ours_resume,trl,before --before_tree {before} --work_dir {tmp_path / 'work'} "
    argv += f"--model_dir {tiny_model_dir} --json {tmp_path / 'bench.json'}"
    results = bench_run.main(argv.split())
    assert [r["config"] for r in results] == ["ours", "ours_resume", "trl", "before"]
    for r in results:
        phases = r["phases_s"]
        assert all(seconds >= 0 for seconds in phases.values()), phases
        assert sum(phases.values()) == pytest.approx(r["wall_s"]) and phases["startup"] > 0
        assert r["evaluations"] >= 1 and r["saves"] >= 1 and r["train_tokens_per_s"] != 0
        parts = [r["startup_s"][name] for name, _ in bench_run.STARTUP_PARTS]  # every mark was reached, in order
        assert all(part is not None and part >= 0 for part in parts) and sum(parts) == pytest.approx(phases["startup"])
        assert r["startup_s"]["dataset_prep"] > 0 and r["recompiles_after_first_step"] == 0  # no compiling on the CPU
    ours, resumed, trl, other = results
    assert (ours["steps_run"], ours["steps"], resumed["steps_run"], resumed["steps"]) == (6, 6, 1, 6)
    assert trl["steps"] == other["steps"] == 2 and trl["eval_tokens_per_s"] > 0
    for r in (ours, resumed, trl):
        assert r["final_eval_rows"] and r["final_eval_rows"] > r["eval_rows"][0]  # the whole split, once
    assert ours["paraphrx_imported_from"] == str(REPO / "paraphrx")
    assert other["paraphrx_imported_from"] == str(before / "paraphrx")  # the other checkout's code ran
    assert (tmp_path / "bench.json").is_file()
    out = capsys.readouterr().out
    assert "median prompt" in out and "steady state, seconds per 20 steps" in out and "| model_load |" in out
    assert "[ours] projected `make train-all`" in out and ours["projection"]["total_s"] > 0


def test_the_projection_scales_steps_and_the_final_evaluation_not_the_subset():
    """One run measured: 11 steps, 10 of them in 5 s of training; 2 evaluations (1 s); 3 saves (3 s); the final
    evaluation 400 rows x 50 tokens at 10,000 tokens/s. Projected on 2x data of two recipes of 80 and 160 rows."""
    result = {
        "phases_s": {
            "startup": 30.0,
            "training": 5.0,
            "evaluation": 1.0,
            "final_eval": 2.0,
            "saving": 3.0,
            "other": 4.0,
        },
        "steps_run": 11,
        "evaluations": 2,
        "saves": 3,
        "final_eval_rows": 400,
        "final_eval_tokens": 20_000,
        "final_eval_tokens_per_s": 10_000.0,
    }
    recipe = {
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 4,
        "num_train_epochs": 3,
        "eval_steps": 20,
        "save_steps": 20,
    }
    sizes = {"1": {"train": 80, "validation": 100}, "1-2": {"train": 160, "validation": 300}}
    projection = bench_run.project_train_all(result, later_startup_s=10.0, sizes=sizes, scale=2, recipe=recipe)
    first, second = projection["runs"]["1"], projection["runs"]["1-2"]
    assert (first["steps"], second["steps"]) == (30, 60)  # 3 epochs x 160 or 320 rows / 16 per step
    assert first["seconds"] == {
        "startup": 30.0,
        "training": 15.0,
        "evaluation": 0.5,
        "saving": 2.0,
        "final_eval": 1.0,
        "other": 4.0,
    }
    assert second["seconds"]["startup"] == 10.0 and second["seconds"]["evaluation"] == 1.5  # 3 evaluations
    assert second["seconds"]["final_eval"] == pytest.approx(600 * 50 / 10_000)
    assert projection["total_s"] == pytest.approx(first["total_s"] + second["total_s"])


def test_the_projection_counts_the_compiling_first_evaluation_once():
    """Four evaluations measured, the first compiling (6 s), the others ~0.6 s: 60 projected steps evaluate 3 times,
    6 s + 2 x 0.6 s, not 3 x the 2 s mean."""
    result = {
        "phases_s": {
            "startup": 30.0,
            "training": 5.0,
            "evaluation": 8.0,
            "final_eval": 0.0,
            "saving": 0.0,
            "other": 0.0,
        },
        "steps_run": 11,
        "evaluations": 4,
        "eval_s": [6.0, 0.5, 0.7, 0.6],
        "saves": 1,
        "final_eval_rows": 0,
        "final_eval_tokens_per_s": None,
    }
    recipe = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4, "eval_steps": 20, "save_steps": 20}
    projection = bench_run.project_train_all(result, 10.0, {"1": {"train": 320, "validation": 0}}, 1, recipe)
    assert projection["runs"]["1"]["steps"] == 60
    assert projection["runs"]["1"]["seconds"]["evaluation"] == pytest.approx(6.0 + 2 * 0.6)


def test_a_configuration_stopped_at_its_timeout_leaves_its_stacks_in_the_log(tmp_path, capsys):
    """A run that outlives --timeout is stopped after phase_timer wrote every thread's stack to its log (so a run
    that printed nothing still says where it was: here `waiting_for_nothing`, or its imports on a busy machine), and
    counts as failed."""
    script = tmp_path / "train_sft.py"
    script.write_text("import time\n\ndef waiting_for_nothing():\n    time.sleep(120)\n\nwaiting_for_nothing()\n")
    cmd = [sys.executable, str(REPO / "benchmarks" / "phase_timer.py"), "--timeline", str(tmp_path / "t.json"), "--"]
    args = argparse.Namespace(timeout=20, warm_compile_cache=False, device="cpu")  # past phase_timer's imports
    assert bench_run.run_config("hung", [*cmd, str(script)], tmp_path, args) is None
    log = (tmp_path / "runs" / "hung" / "process.log").read_text()
    assert "(most recent call first)" in log and "FAILED (timeout)" in capsys.readouterr().out  # faulthandler's dump
