"""A run's logging: UTC lines, a latest link, no secrets, tracebacks in the file only, and everything undone after."""

import logging
import re

import pytest
from loguru import logger

from paraphrx.errors import UserError
from paraphrx.logs import LIBRARY_LOGGERS, run_logging

TOKEN = "hf_" + "A1b2C3d4E5f6G7h8I9j0KLMNOP"


def test_log_file_has_utc_lines_a_latest_link_and_no_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-123456")
    with run_logging("run", tmp_path) as path:
        logger.info("token {} and key {}", TOKEN, "wandb-secret-123456")
        logging.getLogger("transformers").warning("library says Bearer %s", TOKEN)
        try:
            headers = {"authorization": f"Bearer {TOKEN}"}  # a local that loguru's diagnose mode would print
            raise RuntimeError(f"request failed with {headers}")
        except RuntimeError:
            logger.exception("push failed")

    text = path.read_text()
    assert TOKEN not in text and "wandb-secret-123456" not in text
    assert text.count("<HF_TOKEN>") >= 3 and "<WANDB_API_KEY>" in text
    assert "Traceback" in text and "RuntimeError" in text  # the traceback itself is kept, only masked
    first = text.splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \| INFO ", first)
    latest = tmp_path / "run_latest.log"
    assert latest.is_symlink() and latest.resolve() == path.resolve()
    assert re.fullmatch(r"run_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.log", path.name)


def _logging_state():
    root = logging.getLogger()
    libraries = {
        name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate) for name in LIBRARY_LOGGERS
    }
    return list(root.handlers), root.level, libraries


def test_a_crash_is_one_line_on_stderr_its_traceback_in_the_file_and_logging_is_undone(tmp_path, capfd):
    library = logging.getLogger("transformers")
    handler = logging.StreamHandler()
    library.addHandler(handler)  # as transformers sets itself up: its own handler, no propagation
    library.propagate = False
    try:
        before = _logging_state()
        with pytest.raises(RuntimeError), run_logging("crash", tmp_path) as path:
            assert _logging_state() != before  # routed into loguru while the run lasts
            raise RuntimeError("CUDA error: an illegal memory access")
        assert _logging_state() == before
    finally:
        library.removeHandler(handler)
        library.propagate = True
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if "| ERROR" in line]
    assert len(errors) == 1 and errors[0].endswith(
        f"RuntimeError: CUDA error: an illegal memory access (traceback in {path})"
    )
    assert "Traceback" not in err
    text = path.read_text()
    assert errors[0].split("| ERROR")[1] in text and "Traceback (most recent call last)" in text


def test_a_user_error_is_its_line_in_both_and_no_traceback(tmp_path, capfd):
    with pytest.raises(UserError), run_logging("bad", tmp_path) as path:
        raise UserError("recipes/x.yaml: unknown key 'lora_rank'")
    errors = [line for line in capfd.readouterr().err.splitlines() if "| ERROR" in line]
    assert len(errors) == 1 and errors[0].endswith("recipes/x.yaml: unknown key 'lora_rank'")
    assert "recipes/x.yaml: unknown key 'lora_rank'" in path.read_text() and "Traceback" not in path.read_text()


def test_an_unusable_log_dir_is_one_line_and_nothing_changes(tmp_path, capfd):
    (tmp_path / "afile").write_text("not a folder")
    before = _logging_state()
    with pytest.raises(UserError) as err, run_logging("run", tmp_path / "afile" / "logs"):
        pass
    assert err.value.exit_code == 2 and _logging_state() == before
    assert (
        capfd.readouterr().err.strip()
        == f"error: --log_dir: {tmp_path / 'afile' / 'logs'}: {tmp_path / 'afile'} is not a folder"
    )


def test_judge_keys_are_masked_from_the_environment_a_flag_and_by_shape(tmp_path, monkeypatch):
    from paraphrx.logs import add_secret

    monkeypatch.setenv("JUDGE_API_KEY", "judge-key-from-env-1")
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key-from-env-2")
    with run_logging("judge", tmp_path) as path:
        add_secret("flag-given-key-3")
        add_secret("abc")  # too short to mask safely: ignored
        logger.info(
            "keys {} {} {} {} abc",
            "judge-key-from-env-1",
            "openai-key-from-env-2",
            "flag-given-key-3",
            "sk-proj-" + "a1B2c3D4e5F6g7H8i9J0kL",
        )
    text = path.read_text()
    assert "<JUDGE_API_KEY>" in text and "<OPENAI_API_KEY>" in text and text.count("<redacted>") == 2
    assert not any(k in text for k in ("key-from-env", "flag-given", "sk-proj-a1B2"))
    assert text.rstrip().endswith("abc")


def test_entry_points_log_an_unexpected_crash(tmp_path, monkeypatch, gsm8k_path):
    """prep and evaluation: a bug's traceback reaches the log file, the exit code is 1."""
    import evaluate_paraphrx
    import prep.cli

    monkeypatch.setattr(prep.cli, "read_sources", lambda *a, **k: 1 / 0)
    assert (
        prep.cli.main(
            ["--data_paths", str(gsm8k_path), "--output_dir", str(tmp_path / "d"), "--log_dir", str(tmp_path)]
        )
        == 1
    )
    monkeypatch.setattr(evaluate_paraphrx, "run_evaluation", lambda *a: [][0])
    assert evaluate_paraphrx.main(["--log_dir", str(tmp_path)]) == 1
    for name, error in (("prep", "ZeroDivisionError: division by zero"), ("evaluate", "IndexError: list index")):
        text = (tmp_path / f"{name}_latest.log").read_text()
        assert error in text and "Traceback" in text, text


def test_warnings_are_one_log_line_and_library_deprecations_are_dropped(tmp_path, capfd):
    import warnings

    before = (warnings.showwarning, list(warnings.filters))
    with run_logging("warn", tmp_path) as path:
        warnings.warn("a recipe value does something odd", UserWarning, stacklevel=1)
        warnings.warn(
            "`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1
        )  # peft and TRL reading transformers' renamed property: nothing a user can change
    assert (warnings.showwarning, list(warnings.filters)) == before
    err = capfd.readouterr().err
    (line,) = [line for line in err.splitlines() if "odd" in line]
    assert "| WARNING " in line and "UserWarning: a recipe value does something odd (test_logs.py:" in line
    assert "is_gradient_checkpointing" not in err and "is_gradient_checkpointing" not in path.read_text()


def test_ctrl_c_is_one_line_that_says_how_to_go_on(tmp_path, capfd):
    with pytest.raises(KeyboardInterrupt), run_logging("stop", tmp_path, interrupted=lambda: "rerun it to resume"):
        raise KeyboardInterrupt
    err = capfd.readouterr().err
    (line,) = [line for line in err.splitlines() if "| ERROR" in line]
    assert line.endswith("| interrupted: rerun it to resume") and "Traceback" not in err
