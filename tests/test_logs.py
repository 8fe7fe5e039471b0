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


def test_judge_keys_are_masked_from_the_environment_a_flag_and_by_shape(tmp_path, monkeypatch):
    from paraphrx.logs import add_secret

    monkeypatch.setenv("JUDGE_API_KEY", "judge-key-from-env-1")
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key-from-env-2")
    path = setup_logging("judge", tmp_path)
    add_secret("flag-given-key-3")
    add_secret("abc")  # too short to mask safely: ignored
    logger.info("keys {} {} {} {} abc", "judge-key-from-env-1", "openai-key-from-env-2", "flag-given-key-3",
                "sk-proj-" + "a1B2c3D4e5F6g7H8i9J0kL")
    logger.remove()
    text = path.read_text()
    assert "<JUDGE_API_KEY>" in text and "<OPENAI_API_KEY>" in text and text.count("<redacted>") == 2
    assert not any(k in text for k in ("key-from-env", "flag-given", "sk-proj-a1B2"))
    assert text.rstrip().endswith("abc")
