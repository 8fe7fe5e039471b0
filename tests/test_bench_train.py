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
