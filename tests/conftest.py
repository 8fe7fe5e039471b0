"""Shared fixtures: the shipped data files and one tiny offline Gemma-2 per test session."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ALPACA = REPO / "data" / "alpaca_gemma-2-2b-it.json"
GSM8K = REPO / "data" / "gsm8k_gemma-2-2b-it.json"


@pytest.fixture(scope="session")
def alpaca_path() -> Path:
    return ALPACA


@pytest.fixture(scope="session")
def gsm8k_path() -> Path:
    return GSM8K


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Gemma-2 (config + offline-trained tokenizer) saved like a Hub model folder."""
    from paraphrx.tiny_gemma import save_tiny_gemma

    return save_tiny_gemma(tmp_path_factory.mktemp("models") / "tiny-gemma2", [ALPACA, GSM8K])


@pytest.fixture(scope="session")
def prepared_dataset_dir(tmp_path_factory) -> Path:
    """`python -m prep` on both shipped samples (alpaca + gsm8k), default flags: a Hub-layout dataset folder with
    splits bucket1, bucket1_2, bucket1_3, bucket1_4, bucket1_5, validation, test. Load it with `load_prepared`."""
    from prep.cli import run
    from prep.config import PrepConfig

    out = tmp_path_factory.mktemp("prepared") / "paraphrx-sample"
    config = PrepConfig(data_paths=[str(ALPACA), str(GSM8K)], output_dir=str(out))
    return run(config, command=f"python -m prep --data_paths {ALPACA} {GSM8K} --output_dir {out}")


# A kill at a named instant: `patch` is Python run before the entry point; it wraps the library call at which to die
# and calls `die()` there (SIGKILL: no cleanup handler, no flush, like `kill -9` or the OOM killer).
_KILL_WRAPPER = """
import os, runpy, signal, sys

def die():
    os.kill(os.getpid(), signal.SIGKILL)

{patch}
sys.argv = sys.argv[1:]
if sys.argv[0] == "-m":
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def start_python(argv, cwd, patch: str = "", env: dict | None = None, **popen) -> subprocess.Popen:
    """Start `python argv...` (a script path or `-m module`) in a fresh process after running `patch`."""
    wrapper = Path(cwd) / "_entry_wrapper.py"
    wrapper.write_text(_KILL_WRAPPER.format(patch=textwrap.dedent(patch)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, str(wrapper), *map(str, argv)], cwd=cwd, env=env, text=True, **popen)


def run_python(argv, cwd, patch: str = "", env: dict | None = None, timeout: int = 300):
    """`start_python` to the end; the completed process with its stdout and stderr."""
    proc = start_python(argv, cwd, patch, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_killed(argv, cwd, patch: str, **kwargs):
    """`run_python` that must end by SIGKILL at the instant `patch` names (fails the test otherwise)."""
    proc = run_python(argv, cwd, patch, **kwargs)
    assert proc.returncode == -signal.SIGKILL, f"not killed at the named instant (exit {proc.returncode}):\n" + \
        proc.stderr[-3000:]
    return proc
