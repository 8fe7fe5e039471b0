"""benchmarks/bench_train.py's profile reading: GPU busy time and idle gaps from a chrome trace."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_train.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_gpu_gaps_merge_overlapping_kernels_and_name_the_host_work(capsys):
    events = [
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 50},
        {"ph": "X", "cat": "kernel", "name": "a", "ts": 100, "dur": 1000},   # 100..1100
        {"ph": "X", "cat": "kernel", "name": "b", "ts": 600, "dur": 1000},   # overlaps: busy 100..1600
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaStreamSynchronize", "ts": 1500, "dur": 300},
        {"ph": "X", "cat": "cpu_op", "name": "aten::item", "ts": 1700, "dur": 100},
        {"ph": "X", "cat": "kernel", "name": "c", "ts": 3600, "dur": 400},   # gap 1600..3600 = 2 ms
        {"ph": "X", "cat": "kernel", "name": "d", "ts": 4100, "dur": 100},   # gap 0.1 ms: below the threshold
        {"ph": "i", "cat": "kernel", "name": "instant", "ts": 5000},          # not a duration event
    ]
    _bench().print_gpu_gaps({"traceEvents": events}, steps=1)
    out = capsys.readouterr().out.splitlines()
    # busy = 1.5 + 0.4 + 0.1 ms; wall from the first host call (0) to the last kernel's end (4.2 ms)
    assert out[0] == "GPU busy 2.0 ms/step of 4.2 ms/step profiled; 1 gaps >= 0.3 ms sum to 2.0 ms/step"
    assert len(out) == 2 and "gap   2.00 ms at +    1.5 ms" in out[1]
    assert "cudaStreamSynchronize 0.30ms" in out[1] and "aten::item" in out[1] and "aten::mm" not in out[1]


def test_unknown_config_is_a_one_line_usage_error(monkeypatch, capsys):
    import pytest

    monkeypatch.setattr("sys.argv", ["bench_train.py", "--configs", "ours,nope", "--variant", "ours_x=--seed 1"])
    with pytest.raises(SystemExit) as exit_info:
        _bench().main()
    assert exit_info.value.code == 2
    assert "--configs: unknown ['nope']; choose from ['seed', 'trl', 'ours', 'ours_x']" in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", ["bench_train.py", "--configs", "ours", "--variant", "ours_x"])
    with pytest.raises(SystemExit):
        _bench().main()
    assert "--variant takes NAME='recipe args', got ['ours_x']" in capsys.readouterr().err


def test_variant_words_split_into_environment_settings_and_recipe_args():
    env, recipe_args = _bench().split_variant("TORCHINDUCTOR_CPP_WRAPPER=1 --learning_rate 1e-4 --run_name 'a b' "
                                              "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True --x=Y")
    assert env == {"TORCHINDUCTOR_CPP_WRAPPER": "1", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    assert recipe_args == ["--learning_rate", "1e-4", "--run_name", "a b", "--x=Y"]


def test_a_variant_trains_ours_with_its_recipe_overrides(tiny_model_dir, tmp_path):
    """`--variant NAME='...'` runs this project's path with the overrides (here a 64-token cut, so each of the 16
    examples of the one timed step counts at most 64 real tokens; uncut they are ~270 on average) in a process
    that has the variant's environment settings."""
    import json
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(BENCH), "--tiny", "--device", "cpu", "--steps", "1", "--warmup", "1",
                    "--model_dir", str(tiny_model_dir), "--configs", "ours_cut", "--variant",
                    "ours_cut=PARAPHRX_BENCH_PROBE=seen --max_length 64", "--json", str(out)], check=True, timeout=300)
    (result,) = json.loads(out.read_text())["results"]
    assert result["config"] == "ours_cut" and result["timed_steps"] == 1
    assert result["env"] == {"PARAPHRX_BENCH_PROBE": "seen"}
    assert 16 <= result["timed_tokens"] <= 16 * 64
