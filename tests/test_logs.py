import logging
import re

from loguru import logger

from paraphrx.logs import setup_logging

TOKEN = "hf_" + "A1b2C3d4E5f6G7h8I9j0KLMNOP"


def test_log_file_has_utc_lines_a_latest_link_and_no_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-123456")
    path = setup_logging("run", tmp_path)
    logger.info("token {} and key {}", TOKEN, "wandb-secret-123456")
    logging.getLogger("transformers").warning("library says Bearer %s", TOKEN)
    try:
        headers = {"authorization": f"Bearer {TOKEN}"}  # a local that loguru's diagnose mode would print
        raise RuntimeError(f"request failed with {headers}")
    except RuntimeError:
        logger.exception("push failed")
    logger.remove()  # flush and detach before reading

    text = path.read_text()
    assert TOKEN not in text and "wandb-secret-123456" not in text
    assert text.count("<HF_TOKEN>") >= 3 and "<WANDB_API_KEY>" in text
    assert "Traceback" in text and "RuntimeError" in text  # the traceback itself is kept, only masked
    first = text.splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \| INFO ", first)
    latest = tmp_path / "run_latest.log"
    assert latest.is_symlink() and latest.resolve() == path.resolve()
    assert re.fullmatch(r"run_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.log", path.name)


def test_log_crash_writes_the_traceback_with_secrets_masked(tmp_path, monkeypatch):
    from paraphrx.logs import log_crash

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    path = setup_logging("crash", tmp_path)
    try:
        raise RuntimeError(f"lookup with {TOKEN}\nsecond line")
    except RuntimeError as err:
        log_crash(err)
    logger.remove()
    text = path.read_text()
    assert re.search(r"\| CRITICAL \| test_logs:\d+ \| crashed: RuntimeError: lookup with <HF_TOKEN> second line\n",
                     text)
    assert "Traceback" in text and "test_log_crash_writes_the_traceback" in text and TOKEN not in text


def test_entry_points_log_an_unexpected_crash(tmp_path, monkeypatch, gsm8k_path):
    """prep and evaluation: a bug's traceback reaches the log file, the exit code is 1."""
    import evaluate_paraphrx
    import prep.cli

    monkeypatch.setattr(prep.cli, "read_sources", lambda *a, **k: 1 / 0)
    assert prep.cli.main(["--data_paths", str(gsm8k_path), "--output_dir", str(tmp_path / "d"),
                          "--log_dir", str(tmp_path)]) == 1
    monkeypatch.setattr(evaluate_paraphrx, "run_evaluation", lambda *a: [][0])
    assert evaluate_paraphrx.main(["--log_dir", str(tmp_path)]) == 1
    logger.remove()
    for name, error in (("prep", "ZeroDivisionError: division by zero"), ("evaluate", "IndexError: list index")):
        text = (tmp_path / f"{name}_latest.log").read_text()
        assert f"crashed: {error}" in text and "Traceback" in text, text
