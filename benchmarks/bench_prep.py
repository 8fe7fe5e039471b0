"""Benchmark `python -m prep` against the naive way, side by side, on synthetic seed-schema data.

    python benchmarks/bench_prep.py                      # compare at 1k prompts x 300, then ours alone at 10k x 300
    python benchmarks/bench_prep.py --compare_prompts 300 --full_prompts 0   # a quick look

Baseline = what the upstream seed did: `json.load` the whole file, build one Python dict per paraphrase, then per
bucket range `Dataset.from_list(...)` and write it (the split redone per range, here seeded so the outputs match in
size), validation/test the same way. Ours = `python -m prep` with the same buckets and seed. Each runs in its own
process; wall time and that process's peak RSS (wait4) are measured. Generated files live under --workdir (/tmp).
Goal on the 2-core CI box: 3M paraphrase rows (~1.8 GB of JSON) in <= 90 s with <= 6 GiB peak memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: import train_sft and benchmarks.* as the tests do
BUCKETS = ["1", "1-2", "1-3", "1-4", "1-5"]


def baseline(data_path: str, output_dir: str, seed: int = 42) -> None:
    """The naive prep: whole-file json.load, a dict per row, Dataset.from_list per bucket range."""
    import json
    import random

    from datasets import Dataset

    from paraphrx.buckets import parse_bucket_spec, split_name
    from prep.templates import ALPACA_NO_INPUT, ALPACA_WITH_INPUT

    with open(data_path, encoding="utf-8") as f:
        data = json.load(f)
    prompts = sorted(row["prompt_count"] for row in data)
    random.Random(seed).shuffle(prompts)
    n_held = max(1, len(prompts) // 10)
    test, validation = set(prompts[:n_held]), set(prompts[n_held : 2 * n_held])

    def rows(keep):
        for row in data:
            if keep(row["prompt_count"]):
                for p in row["paraphrases"]:
                    template = ALPACA_WITH_INPUT if row["input"] else ALPACA_NO_INPUT
                    yield p, {
                        "prompt": template.format(instruction=p["paraphrase"], input=row["input"]),
                        "completion": row["output"], "reference": row["output"], "source": "alpaca",
                        "prompt_count": row["prompt_count"], "instruct_type": p["instruct_type"], "paraphrase": p["paraphrase"],
                        "input": row["input"], "bucket": p["bucket"], "task_score": float(p["task_score"]),
                    }  # fmt: skip

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for spec in BUCKETS:
        buckets = parse_bucket_spec(spec)
        train = [r for p, r in rows(lambda c: c not in test and c not in validation) if p["bucket"] in buckets]
        Dataset.from_list(train).to_parquet(out / f"{split_name(buckets)}.parquet")
    for name, held in (("validation", validation), ("test", test)):
        Dataset.from_list([r for _, r in rows(lambda c: c in held)]).to_parquet(out / f"{name}.parquet")  # noqa: B023 (called in this iteration)


def measure(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def synth(workdir: Path, prompts: int, paraphrases: int, answer_chars: tuple[int, int] | None = None) -> Path:
    from benchmarks.synth_data import write_synth

    lengths = {"answer_chars": tuple(answer_chars)} if answer_chars else {}
    suffix = f"-answer{answer_chars[0]}-{answer_chars[1]}" if answer_chars else ""
    path = workdir / f"alpaca_synth-{prompts}x{paraphrases}{suffix}.json"
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        write_synth(path, prompts, paraphrases, seed=0, **lengths)
    return path


def run_ours(data: Path, out: Path, extra: list[str] = ()) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "prep",
        "--data_paths",
        str(data),
        "--output_dir",
        str(out),
        "--seed",
        "42",
        "--buckets",
        *BUCKETS,
        *extra,
    ]
    return measure(cmd)


def run_baseline(data: Path, out: Path) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    return measure([sys.executable, __file__, "--_baseline", str(data), str(out)])


def report(label: str, data: Path, rows: int, wall: float, rss: float) -> None:
    print(
        f"| {label} | {rows:,} | {data.stat().st_size / 1e9:.2f} | {wall:.1f} | {rows / wall:,.0f} | {rss:.2f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/paraphrx-bench"))
    parser.add_argument("--paraphrases", type=int, default=300)
    parser.add_argument("--compare_prompts", type=int, default=1000, help="size of the side-by-side run (0 skips it)")
    parser.add_argument("--full_prompts", type=int, default=10_000, help="size of the goal run, ours only (0 skips it)")
    parser.add_argument(
        "--full_prep_args",
        default="",
        help="extra prep flags for the goal run, e.g. '--template gemma --use_paraphrase_answer'",
    )
    parser.add_argument("--answer_chars", type=int, nargs=2, metavar=("MIN", "MAX"), help="answer lengths of the data")
    parser.add_argument("--_baseline", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._baseline:
        return baseline(*args._baseline)

    args.workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f}\n")
    print("| run | paraphrase rows | JSON GB | wall s | rows/s | peak RSS GiB |")
    print("|---|---|---|---|---|---|")
    if args.compare_prompts:
        data = synth(args.workdir, args.compare_prompts, args.paraphrases, args.answer_chars)
        rows = args.compare_prompts * args.paraphrases
        base = run_baseline(data, args.workdir / "out-baseline")
        report("baseline (json.load + dicts + Dataset.from_list per range)", data, rows, *base)
        ours = run_ours(data, args.workdir / "out-ours")
        report("ours (python -m prep)", data, rows, *ours)
        print(
            f"\nspeed-up {base[0] / ours[0]:.1f}x, peak memory {base[1] / ours[1]:.1f}x lower (baseline / ours, same data, same run)\n"
        )
    if args.full_prompts:
        data = synth(args.workdir, args.full_prompts, args.paraphrases, args.answer_chars)
        rows = args.full_prompts * args.paraphrases
        wall, rss = run_ours(data, args.workdir / "out-ours-full", args.full_prep_args.split())
        report(f"ours, goal size {args.full_prep_args}".strip(), data, rows, wall, rss)
        verdict = "meets" if wall <= 90 and rss <= 6 else "MISSES"
        print(f"\ngoal (<= 90 s, <= 6 GiB for ~3M rows): {verdict} — {wall:.1f} s, {rss:.2f} GiB")


if __name__ == "__main__":
    main()
