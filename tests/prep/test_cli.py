"""`python -m prep` on bad input: exit code 2, one error line naming file, row and field, no traceback, no output
folder, and a previous dataset left intact. Most cases run `main()` in-process (fast); a few run the real process."""

import copy
import json
import os
import subprocess
import sys

import pytest
from loguru import logger

from prep.cli import main
from tests.conftest import REPO
from tests.prep.conftest import with_field


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run main() with logs under tmp_path, and give loguru back its default sink afterwards."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    logger.remove()
    logger.add(sys.stderr)


@pytest.fixture(scope="module")
def rows(gsm8k_path):
    return json.loads(gsm8k_path.read_text(encoding="utf-8"))


def _write(path, rows):
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "| ERROR" in line]


# case: (path of the broken field in the file, value (KeyError = delete), row index, field named, words in the message)
ROW_CASES = {
    "row not an object": ((3,), ["not", "a", "row"], 3, None, "expected an object"),
    "missing field": ((2, "output"), KeyError, 2, "output", "missing"),
    "null field": ((2, "paraphrases", 4, "answer"), None, 2, "paraphrases[4].answer", "null"),
    "wrong type": ((2, "prompt_count"), "3", 2, "prompt_count", "expected an integer"),
    "bucket outside 1-5": ((5, "paraphrases", 1, "bucket"), 7, 5, "paraphrases[1].bucket", "outside 1-5"),
    "task_score outside 0-10": (
        (5, "paraphrases", 0, "task_score"),
        11,
        5,
        "paraphrases[0].task_score",
        "outside 0-10",
    ),
    "count_in_buckets not 5 long": ((1, "count_in_buckets"), [7, 2, 2, 0], 1, "count_in_buckets", "expected 5"),
    "count_in_buckets disagrees": ((1, "count_in_buckets"), [6, 3, 2, 0, 0], 1, "count_in_buckets", "disagrees"),
    "empty paraphrases": ((7, "paraphrases"), [], 7, "paraphrases", "empty"),
    "duplicate prompt_count": ((6, "prompt_count"), 1, 6, "prompt_count", "duplicates row 0"),
}


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_bad_rows(in_tmp, rows, capfd, case):
    path_in_file, value, index, field, words = ROW_CASES[case]
    bad = with_field(rows, path_in_file, value)
    path = _write(in_tmp / "gsm8k_bad.json", bad)
    out = in_tmp / "ds"
    assert main(["--data_paths", str(path), "--output_dir", str(out)]) == 2
    err = capfd.readouterr().err
    (line,) = _error_lines(err)
    assert f"{path}: row {index}: " + (f"{field}: " if field else "") in line and words in line
    assert "Traceback" not in err and not out.exists()
    assert [p.name for p in in_tmp.iterdir() if p.name != "logs"] == ["gsm8k_bad.json"]  # no temp folder either


FILE_CASES = {
    "bad JSON": (b'[{"prompt_count": 1,, }]', "row 0: invalid JSON"),
    "not UTF-8": (b'[{"prompt_count": 1, "output": "caf\xe9"}]', "row 0: output: not UTF-8"),
    "empty file": (b"", "empty file"),
    "top level not a list": (b'{"rows": []}', "top level is an object"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_files(in_tmp, rows, capfd, case):
    content, words = FILE_CASES[case]
    good = _write(in_tmp / "alpaca_good.json", rows)
    bad = in_tmp / "gsm8k_bad.json"
    bad.write_bytes(content)
    out = in_tmp / "ds"
    # With --skip_invalid too: a broken file cannot be skipped row by row.
    assert main(["--data_paths", str(good), str(bad), "--output_dir", str(out), "--skip_invalid"]) == 2
    err = capfd.readouterr().err
    (line,) = _error_lines(err)
    assert f"{bad}: {words}" in line
    assert "Traceback" not in err and not out.exists()


def test_duplicate_prompt_count_across_files_of_one_source(in_tmp, rows, capfd):
    first = _write(in_tmp / "gsm8k_part1.json", rows[:4])
    second = _write(in_tmp / "gsm8k_part2.json", rows[3:])  # row 3 appears in both
    other = _write(in_tmp / "mmlu_x.json", rows[:4])  # same prompt_counts, another source: fine
    assert main(["--data_paths", str(other), str(first), str(second), "--output_dir", str(in_tmp / "ds")]) == 2
    (line,) = _error_lines(capfd.readouterr().err)
    assert f"{second}: row 0: prompt_count: 4 duplicates row 3 of {first} (source 'gsm8k')" in line


@pytest.mark.parametrize("spec", ["0", "6", "3-1", "1-", "1-2-3", "x"])
def test_bad_bucket_specs(in_tmp, gsm8k_path, capfd, spec):
    assert main(["--data_paths", str(gsm8k_path), "--output_dir", str(in_tmp / "ds"), "--buckets", "1-2", spec]) == 2
    (line,) = _error_lines(capfd.readouterr().err)
    assert "--buckets" in line and repr(spec) in line
    assert not (in_tmp / "ds").exists()


def test_bad_split_and_missing_file(in_tmp, gsm8k_path, capfd):
    assert main(["--data_paths", str(gsm8k_path), "--output_dir", "ds", "--split", "80/20"]) == 2
    assert "--split" in _error_lines(capfd.readouterr().err)[0]
    assert main(["--data_paths", "nope_x.json", "--output_dir", "ds"]) == 2
    assert "--data_paths: nope_x.json: no such file" in _error_lines(capfd.readouterr().err)[0]


def test_skip_invalid_drops_rows_and_reports_them(in_tmp, rows, capfd):
    bad = copy.deepcopy(rows)
    bad[2]["paraphrases"][1]["bucket"] = 9
    bad[5]["paraphrases"][0]["bucket"] = 0
    bad[6]["output"] = None
    path = _write(in_tmp / "gsm8k_some_bad.json", bad)
    out = in_tmp / "ds"
    assert main(["--data_paths", str(path), "--output_dir", str(out), "--skip_invalid"]) == 0
    err = capfd.readouterr().err
    assert "dropped 3 row(s)" in err and "'paraphrases[*].bucket: outside 1-5': 2" in err
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "2 × paraphrases[*].bucket: outside 1-5; 1 × output: null" in card
    from datasets import load_dataset

    kept = set()
    for split in ("bucket1_5", "validation", "test"):
        kept |= set(load_dataset(str(out), split=split)["prompt_count"])
    assert kept == {1, 2, 4, 5, 8}
    assert (in_tmp / "logs" / "prep_latest.log").read_text().count("skipping") == 3


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_max_shard_mb_must_be_positive(in_tmp, gsm8k_path, capfd, value):
    assert main(["--data_paths", str(gsm8k_path), "--output_dir", str(in_tmp / "ds"), "--max_shard_mb", value]) == 2
    (line,) = _error_lines(capfd.readouterr().err)
    assert "--max_shard_mb: expected a number of MB greater than 0" in line
    assert not (in_tmp / "ds").exists()


def test_log_dir_flag(in_tmp, gsm8k_path):
    assert main(["--data_paths", str(gsm8k_path), "--output_dir", "ds", "--log_dir", "elsewhere/logs"]) == 0
    assert (in_tmp / "elsewhere" / "logs" / "prep_latest.log").is_symlink()
    assert "wrote ds" in (in_tmp / "elsewhere" / "logs" / "prep_latest.log").read_text()
    assert not (in_tmp / "logs").exists()


def _run_module(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "prep", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**(env or os.environ), "PYTHONPATH": str(REPO)})  # fmt: skip


def test_process_os_error_is_one_line(tmp_path, gsm8k_path):
    """An --output_dir below a file: one line naming the path, exit 2, no traceback, nothing left behind."""
    (tmp_path / "afile").write_text("not a folder")
    failed = _run_module("--data_paths", str(gsm8k_path), "--output_dir", "afile/sub", cwd=tmp_path)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    (line,) = _error_lines(failed.stderr)
    assert line.endswith("--output_dir afile/sub: afile is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "logs"]

    bad_log_dir = _run_module("--data_paths", str(gsm8k_path), "--output_dir", "ds", "--log_dir", "afile/logs",
                              cwd=tmp_path)  # fmt: skip
    assert bad_log_dir.returncode == 2 and "Traceback" not in bad_log_dir.stderr
    assert bad_log_dir.stderr.strip() == "error: --log_dir: afile/logs: afile is not a folder"


def test_process_push_failure_is_one_line(tmp_path, gsm8k_path):
    """A Hub that cannot be reached (a closed local port, never the network): one line naming the repo, exit 1."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    failed = _run_module("--data_paths", str(gsm8k_path), "--output_dir", "ds", "--push_to_hub", "me/x",
                         cwd=tmp_path, env=env)  # fmt: skip
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    (line,) = _error_lines(failed.stderr)
    assert "--push_to_hub me/x: " in line
    assert (tmp_path / "ds" / "README.md").is_file()


def test_process_exit_code_and_previous_dataset_intact(tmp_path, rows, gsm8k_path):
    """The real process: a good build, then a bad input that must not touch it."""
    out = tmp_path / "ds"
    ok = _run_module("--data_paths", str(gsm8k_path), "--output_dir", str(out), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert (tmp_path / "logs" / "prep_latest.log").is_symlink()

    bad = _write(tmp_path / "gsm8k_bad.json", with_field(rows, (3, "paraphrases", 2, "task_score"), -0.5))
    failed = _run_module("--data_paths", str(bad), "--output_dir", str(out), cwd=tmp_path)
    assert failed.returncode == 2
    (line,) = _error_lines(failed.stderr)
    assert line.endswith(f"{bad}: row 3: paraphrases[2].task_score: -0.5 outside 0-10")
    assert "Traceback" not in failed.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "gsm8k_bad.json", "logs"]


def test_process_help_lists_the_flags(tmp_path):
    shown = _run_module("--help", cwd=tmp_path).stdout
    for flag in ("--data_paths", "--buckets", "--seed", "--split", "--use_paraphrase_answer", "--template", "--output_dir",
                 "--push_to_hub", "--private", "--skip_invalid", "--max_shard_mb", "--log_dir"):  # fmt: skip
        assert flag in shown


def test_process_hostile_nesting_is_refused_in_bounded_memory(tmp_path):
    """200 KB of nested brackets grew prep to ~24 GB; under a 4 GiB address-space limit it is now one line."""
    import resource

    (tmp_path / "alpaca_deep.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)

    def four_gib():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    proc = subprocess.run(
        [sys.executable, "-m", "prep", "--data_paths", "alpaca_deep.json", "--output_dir", "ds"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=four_gib,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = _error_lines(proc.stderr)
    assert line.endswith(": nested deeper than 32 levels") and "alpaca_deep.json: row 0: [0][0]" in line
    assert not (tmp_path / "ds").exists()


def test_process_killed_while_writing_keeps_the_dataset_and_the_next_run_cleans(tmp_path, gsm8k_path):
    """A kill in the middle of the parquet writing used to leave a hidden `.ds.tmp-*` of hundreds of MB forever."""
    from tests.conftest import run_killed

    out = tmp_path / "ds"
    assert _run_module("--data_paths", str(gsm8k_path), "--output_dir", str(out), cwd=tmp_path).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    run_killed(
        ["-m", "prep", "--data_paths", gsm8k_path, "--output_dir", out, "--seed", "7"],
        tmp_path,
        """
        import pyarrow.parquet as pq
        write_table = pq.ParquetWriter.write_table
        def write_then_die(self, *args, **kwargs):
            write_table(self, *args, **kwargs)
            die()
        pq.ParquetWriter.write_table = write_then_die
    """,
    )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    [leftover] = [p for p in tmp_path.iterdir() if p.name.startswith(".ds.tmp-")]
    assert any(leftover.rglob("*.parquet"))

    again = _run_module("--data_paths", str(gsm8k_path), "--output_dir", str(out), "--seed", "7", cwd=tmp_path)
    assert again.returncode == 0 and not leftover.exists()
    assert json.loads((out / "prompt_split.json").read_text())["seed"] == 7


def test_process_killed_between_the_two_renames_of_a_swap_is_recovered(tmp_path, gsm8k_path):
    """Where RENAME_EXCHANGE is unavailable the swap is two renames; killed between them, the dataset folder used to
    disappear. The next run puts the previous one back first (and then replaces it)."""
    from paraphrx.atomic_folder import recover_folder
    from paraphrx.dataset_io import load_prepared
    from tests.conftest import run_killed
    from tests.paraphrx.test_atomic_folder import KILL_BETWEEN_THE_TWO_RENAMES

    out = tmp_path / "ds"
    assert _run_module("--data_paths", str(gsm8k_path), "--output_dir", str(out), cwd=tmp_path).returncode == 0
    card = (out / "README.md").read_text()
    run_killed(
        ["-m", "prep", "--data_paths", gsm8k_path, "--output_dir", out, "--seed", "7"],
        tmp_path,
        KILL_BETWEEN_THE_TWO_RENAMES,
    )
    assert not out.exists()
    recover_folder(out)  # what any next run on the path does first
    assert (out / "README.md").read_text() == card and len(load_prepared(str(out), "test")) > 0
