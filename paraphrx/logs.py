"""Logging for every stage: loguru to stderr and to `logs/<run_name>_<YYYY-mm-dd_HH-MM-SS>.log` (UTC), with a
`logs/<run_name>_latest.log` link to the newest file. Python `logging` records (transformers, TRL, datasets) are
routed into the same sinks, and every formatted line (tracebacks included) passes a filter that masks token values,
so `HF_TOKEN` or `WANDB_API_KEY` never reach a log even if a library prints them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from loguru import logger

SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN", "WANDB_API_KEY")
# Token shapes worth masking even when they did not come from the environment.
_SECRET_PATTERNS = [re.compile(r"hf_[A-Za-z0-9]{20,}")]
LIBRARY_LOGGERS = ("transformers", "trl", "datasets", "peft", "accelerate", "huggingface_hub")
_FORMAT = "{time:YYYY-MM-DDTHH:mm:ss.SSS!UTC}Z | {level: <8} | {name}:{line} | {message}"


def redact(text: str) -> str:
    """Mask the values of known secret environment variables and token-shaped strings."""
    for var in SECRET_ENV_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 6:
            text = text.replace(value, f"<{var}>")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("<redacted>", text)
    return text


class _RedactingSink:
    """Writes each fully formatted line, traceback included, with secrets masked."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, message: str) -> None:
        self.stream.write(redact(message))
        self.stream.flush()


class _InterceptHandler(logging.Handler):
    """Send stdlib logging records to loguru (the recipe from loguru's README)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def setup_logging(run_name: str, log_dir: str | Path = "logs", level: str = "INFO", main_process: bool = True) -> Path | None:
    """Configure loguru once per process. Only the main process writes the file; others log warnings to stderr."""
    logger.remove()
    # diagnose=False: loguru would otherwise print every local variable of a traceback (a token among them).
    logger.add(_RedactingSink(sys.stderr), level=level if main_process else "WARNING", format=_FORMAT,
               colorize=False, diagnose=False)
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
    for name in LIBRARY_LOGGERS:  # transformers & co. keep their own stderr handler and stop propagation: undo that
        library_logger = logging.getLogger(name)
        library_logger.handlers.clear()
        library_logger.propagate = True
    if not main_process:
        return None
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
    path = log_dir / f"{run_name}_{stamp}.log"
    logger.add(_RedactingSink(path.open("a", encoding="utf-8")), level="DEBUG", format=_FORMAT, diagnose=False)
    latest = log_dir / f"{run_name}_latest.log"
    tmp = log_dir / f".{run_name}_latest.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(path.name)
    os.replace(tmp, latest)  # atomic swap of the link
    logger.info("logging to {}", path)
    return path


def log_crash(err: BaseException) -> None:
    """An unexpected error, traceback included, to stderr and the run's log file (secrets masked, no local values).
    Entry points call it last, for what their one-line error messages do not cover; Python's own report of an
    uncaught exception would reach stderr only, and the log file would just stop."""
    message = " ".join(str(err).split()) or "(no message)"
    logger.opt(exception=err, depth=1).critical("crashed: {}: {}", type(err).__name__, message)
