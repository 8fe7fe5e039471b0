"""The one error path of the entry points: one line per user error, a traceback in the log for anything else, and
the exit code; OSError turned into a one-line error only around loading."""

import pytest

from paraphrx.errors import EXIT_BAD_INPUT, EXIT_FAILED, UserError, describe, exit_code, loading, one_line, run_cli
from paraphrx.logs import run_logging


class _Missing(UserError):
    exit_code = EXIT_FAILED


def test_describe_names_the_path_or_the_kind_of_failure():
    assert describe(FileExistsError(17, "File exists", "afile")) == "afile: File exists"
    assert describe(OSError(18, "Invalid cross-device link", "a", None, "b")) == "a -> b: Invalid cross-device link"
    assert describe(ConnectionError("Connection reset\nby peer")) == "ConnectionError: Connection reset by peer"
    assert describe(ValueError("data: no split 'x'\n(it has: test)")) == "data: no split 'x' (it has: test)"
    assert one_line(RuntimeError()) == "RuntimeError"


def test_loading_turns_os_and_value_errors_into_one_user_error_line():
    with pytest.raises(_Missing) as err, loading("base model org/x", _Missing):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nCheck your connection.")
    assert (
        str(err.value)
        == "base model org/x: OSError: We couldn't connect to 'https://huggingface.co' Check your connection."
    )
    with pytest.raises(RuntimeError), loading("base model org/x", _Missing):  # not a loading failure: untouched
        raise RuntimeError("CUDA error")


def test_exit_codes():
    assert exit_code(UserError("bad key")) == EXIT_BAD_INPUT and exit_code(_Missing("gone")) == EXIT_FAILED
    assert exit_code(OSError(28, "No space left on device")) == EXIT_FAILED
    assert exit_code(KeyboardInterrupt()) == 130
    assert run_cli(lambda: None) == 0 and run_cli(lambda x: None, 1) == 0


def test_a_full_disk_after_loading_keeps_its_traceback_in_the_log(tmp_path, capfd):
    """What train_sft does when a disk fills during training: not a one-line user error, but a crash whose
    traceback reaches the run's log file, with one short line on stderr and exit code 1."""

    def main():
        with run_logging("run", tmp_path):
            raise OSError(28, "No space left on device", "outputs/run/checkpoint-20/optimizer.pt")

    assert run_cli(main) == EXIT_FAILED
    err = capfd.readouterr().err
    (line,) = [line for line in err.splitlines() if "| ERROR" in line]
    log_file = next(tmp_path.glob("run_2*.log"))
    assert line.endswith(
        f"OSError: [Errno 28] No space left on device: 'outputs/run/checkpoint-20/optimizer.pt' "
        f"(traceback in {log_file})"
    )
    assert "Traceback" not in err and "Traceback (most recent call last)" in log_file.read_text()


def test_ctrl_c_while_an_entry_point_starts_is_one_line(tmp_path):
    """Ctrl-C during the seconds train_sft.py spends importing torch and transformers printed their traceback."""
    import signal

    from tests.conftest import REPO, run_python

    proc = run_python(
        [REPO / "train_sft.py", "recipes/tiny/bucket1.yaml"],
        tmp_path,
        """
        import builtins
        load = builtins.__import__
        def ctrl_c_at_accelerate(name, *args, **kwargs):
            if name == "accelerate":
                raise KeyboardInterrupt
            return load(name, *args, **kwargs)
        builtins.__import__ = ctrl_c_at_accelerate
    """,
    )
    assert proc.returncode in (-signal.SIGINT, 130)  # Python ends by SIGINT: 130 in a shell
    assert proc.stderr.strip() == "interrupted while starting; nothing was written"
