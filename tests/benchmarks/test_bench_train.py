"""benchmarks/bench_train.py: its profile reading (GPU busy time and idle gaps from a chrome trace), its command line,
its lever switches, and a variant run on the CPU."""

from contextlib import ExitStack

from benchmarks import bench_train
from tests.conftest import REPO

BENCH = REPO / "benchmarks" / "bench_train.py"


def test_gpu_gaps_merge_overlapping_kernels_and_name_the_host_work(capsys):
    events = [
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 50},
        {"ph": "X", "cat": "kernel", "name": "a", "ts": 100, "dur": 1000},  # 100..1100
        {"ph": "X", "cat": "kernel", "name": "b", "ts": 600, "dur": 1000},  # overlaps: busy 100..1600
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaStreamSynchronize", "ts": 1500, "dur": 300},
        {"ph": "X", "cat": "cpu_op", "name": "aten::item", "ts": 1700, "dur": 100},
        {"ph": "X", "cat": "kernel", "name": "c", "ts": 3600, "dur": 400},  # gap 1600..3600 = 2 ms
        {"ph": "X", "cat": "kernel", "name": "d", "ts": 4100, "dur": 100},  # gap 0.1 ms: below the threshold
        {"ph": "i", "cat": "kernel", "name": "instant", "ts": 5000},  # not a duration event
    ]
    bench_train.print_gpu_gaps({"traceEvents": events}, steps=1)
    out = capsys.readouterr().out.splitlines()
    # busy = 1.5 + 0.4 + 0.1 ms; wall from the first host call (0) to the last kernel's end (4.2 ms)
    assert out[0] == "GPU busy 2.0 ms/step of 4.2 ms/step profiled; 1 gaps >= 0.3 ms sum to 2.0 ms/step"
    assert len(out) == 2 and "gap   2.00 ms at +    1.5 ms" in out[1]
    assert "cudaStreamSynchronize 0.30ms" in out[1] and "aten::item" in out[1] and "aten::mm" not in out[1]


def test_host_time_sums_outermost_calls_per_thread(capsys):
    events = [
        {"ph": "X", "cat": "cpu_op", "name": "CompiledFunction", "ts": 0, "dur": 400, "tid": 1},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 100, "dur": 50, "tid": 1},  # inside: not counted again
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 110, "dur": 10, "tid": 1},
        {"ph": "X", "cat": "cpu_op", "name": "CompiledFunction", "ts": 600, "dur": 400, "tid": 1},
        {"ph": "X", "cat": "cuda_runtime", "name": "cuLaunchKernelEx", "ts": 650, "dur": 190, "tid": 1},
        {"ph": "X", "cat": "cpu_op", "name": "backward", "ts": 700, "dur": 500, "tid": 2},  # another thread
        {"ph": "X", "cat": "user_annotation", "name": "Optimizer.step", "ts": 1800, "dur": 200, "tid": 1},
        {"ph": "X", "cat": "kernel", "name": "k", "ts": 0, "dur": 5000, "tid": 7},  # GPU: not host time
    ]
    bench_train.print_host_time({"traceEvents": events}, steps=2)
    out = capsys.readouterr().out.splitlines()
    # wall 0..2000 us; covered 0..400, 600..1200, 1800..2000 = 1200 us; so 800 us between calls; 2 launches, 200 us
    assert out[0] == (
        "host: 1.0 ms/step profiled, 0.4 ms/step outside any profiled call; 1 kernel launches/step taking 0.1 ms/step"
    )
    assert [line.split()[0] for line in out[1:]] == ["0.40", "0.25", "0.10"]
    assert out[1].endswith("CompiledFunction") and "     1 calls/step" in out[1]
    assert out[2].endswith("backward") and out[3].endswith("Optimizer.step")


def test_unknown_config_is_a_one_line_usage_error(monkeypatch, capsys):
    import pytest

    monkeypatch.setattr("sys.argv", ["bench_train.py", "--configs", "ours,nope", "--variant", "ours_x=--seed 1"])
    with pytest.raises(SystemExit) as exit_info:
        bench_train.main()
    assert exit_info.value.code == 2
    assert "--configs: unknown ['nope']; choose from ['seed', 'trl', 'ours', 'ours_x']" in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", ["bench_train.py", "--configs", "ours", "--variant", "ours_x"])
    with pytest.raises(SystemExit):
        bench_train.main()
    assert "--variant takes NAME='recipe args', got ['ours_x']" in capsys.readouterr().err


def test_variant_words_split_into_environment_settings_and_recipe_args():
    env, recipe_args = bench_train.split_variant(
        "TORCHINDUCTOR_CPP_WRAPPER=1 --learning_rate 1e-4 --run_name 'a b' "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True --x=Y"
    )
    assert env == {"TORCHINDUCTOR_CPP_WRAPPER": "1", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    assert recipe_args == ["--learning_rate", "1e-4", "--run_name", "a b", "--x=Y"]


def test_levers_switched_off_fall_back_to_trl_and_transformers(monkeypatch):
    import pytest
    import torch
    from trl.kernels import ChunkedLogProbFunction

    import paraphrx.fast_path
    import paraphrx.lm_head
    from paraphrx.config import ParaphrxSFTConfig

    monkeypatch.setattr(paraphrx.fast_path, "CHANGES", paraphrx.fast_path.CHANGES)  # restored after the test
    monkeypatch.setattr(paraphrx.lm_head, "LogProbsWithGradient", paraphrx.lm_head.LogProbsWithGradient)
    every_change = {change.name for change in paraphrx.fast_path.CHANGES}
    assert {name for name in bench_train.LEVERS.values() if name} <= every_change  # each lever names a real change
    with pytest.raises(SystemExit, match="unknown \\['nope'\\]"):
        bench_train.switch_off_levers(["walks", "nope"])
    bench_train.switch_off_levers(list(bench_train.LEVERS))
    left = {change.name for change in paraphrx.fast_path.CHANGES}
    assert every_change - left == {
        "trained positions from the collator",
        "module walks listed once",
        "collation in a dataloader worker",
    }
    args = ParaphrxSFTConfig(output_dir="/tmp/unused", report_to="none", use_cpu=True, bf16=False)
    with ExitStack() as undo:
        paraphrx.fast_path.change_arguments(args, undo)
        assert args.dataloader_num_workers == 0 and args.padding_free  # the rest of the fast path's settings stay
    h, w, targets = torch.randn(5, 8, requires_grad=True), torch.randn(40, 8), torch.randint(0, 40, (5,))
    log_probs, entropy, is_top1 = paraphrx.lm_head.LogProbsWithGradient.apply(h, w, targets, 30.0)
    trl = ChunkedLogProbFunction.apply(h, w, None, targets, 1.0, 16, 30.0, 1.0, ("log_probs", "entropy", "is_top1"))
    torch.testing.assert_close(log_probs, trl[0])
    assert log_probs.grad_fn.name().startswith("ChunkedLogProbFunction")


def test_a_variant_trains_ours_with_its_recipe_overrides(tiny_model_dir, tmp_path):
    """`--variant NAME='...'` runs this project's path with the overrides (here a 64-token cut, so each of the 16
    examples of the one timed step counts at most 64 real tokens; uncut they are ~270 on average) in a process
    that has the variant's environment settings."""
    import json
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--tiny",
            "--device",
            "cpu",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--model_dir",
            str(tiny_model_dir),
            "--configs",
            "ours_cut",
            "--variant",
            "ours_cut=PARAPHRX_BENCH_PROBE=seen --max_length 64",
            "--json",
            str(out),
        ],
        check=True,
        timeout=300,
    )
    (result,) = json.loads(out.read_text())["results"]
    assert result["config"] == "ours_cut" and result["timed_steps"] == 1
    assert result["env"] == {"PARAPHRX_BENCH_PROBE": "seen"}
    assert 16 <= result["timed_tokens"] <= 16 * 64
