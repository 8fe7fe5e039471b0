"""Logging for every stage: loguru to stderr and to `logs/<run_name>_<YYYY-mm-dd_HH-MM-SS>.log` (UTC), with a
`logs/<run_name>_latest.log` link to the newest file. Python `logging` records (transformers, TRL, datasets) are
routed into the same sinks, and every formatted line (tracebacks included) passes a filter that masks token values,
so `HF_TOKEN` or `WANDB_API_KEY` never reach a log even if a library prints them.

`run_logging` holds this for the length of a run and undoes it at the end (loguru's sinks, the root logger, the
libraries' own handlers); what ends the run with an exception is reported first (errors.report), so its line and,
for a crash, its traceback reach the log file. Tracebacks go to the file, not to stderr, when there is a file.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path

from loguru import logger

from paraphrx.errors import UserError, describe, report
from paraphrx.patches import patch_attribute
from paraphrx.paths import output_folder_problem

SECRET_ENV_VARS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACE_TOKEN",
    "WANDB_API_KEY",
    "JUDGE_API_KEY",
    "OPENAI_API_KEY",
)
# Token shapes worth masking even when they did not come from the environment (Hub tokens, OpenAI-style keys).
_SECRET_PATTERNS = [re.compile(r"hf_[A-Za-z0-9]{20,}"), re.compile(r"sk-[A-Za-z0-9_-]{20,}")]
_SECRET_VALUES: set[str] = set()  # secrets given another way (a flag), registered by `add_secret`
LIBRARY_LOGGERS = ("transformers", "trl", "datasets", "peft", "accelerate", "huggingface_hub")
_FORMAT = "{time:YYYY-MM-DDTHH:mm:ss.SSS!UTC}Z | {level: <8} | {name}:{line} | {message}"


def redact(text: str) -> str:
    """Mask the values of known secret environment variables and token-shaped strings."""
    for var in SECRET_ENV_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 6:
            text = text.replace(value, f"<{var}>")
    for value in _SECRET_VALUES:
        text = text.replace(value, "<redacted>")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("<redacted>", text)
    return text


def plural(count: int, noun: str) -> str:
    """`1 prompt`, `2 prompts`, `1,072 rows` for a log line."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def add_secret(value: str) -> None:
    """Mask `value` in every log line from now on (a key passed as a flag rather than through the environment)."""
    if value and len(value) >= 6:
        _SECRET_VALUES.add(value)


class _RedactingSink:
    """Writes each fully formatted line, traceback included, with secrets masked; closes a file it was given to own
    when loguru removes it."""

    def __init__(self, stream, owned: bool = False):
        self.stream, self.owned = stream, owned

    def write(self, message: str) -> None:
        self.stream.write(redact(message))
        self.stream.flush()

    def stop(self) -> None:
        if self.owned:
            self.stream.close()


class _InterceptHandler(logging.Handler):
    """Send stdlib logging records to loguru (the recipe from loguru's README)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


@contextmanager
def run_logging(
    run_name: str,
    log_dir: str | Path = "logs",
    level: str = "INFO",
    main_process: bool = True,
    interrupted: Callable[[], str] | None = None,
) -> Iterator[Path | None]:
    """Log a run (see the module docstring) until the context ends; yields the log file (None off the main process,
    which logs warnings to stderr only). An exception leaving the context is reported before logging is undone; for
    Ctrl-C, `interrupted()` says what was kept and how to go on. An unusable `log_dir` is one line
    `error: --log_dir: <path>: <what>` and a UserError (exit code 2)."""
    with ExitStack() as undo:
        undo.callback(_restore_loguru)
        logger.remove()
        _route_stdlib_logging(undo)
        _route_warnings(undo)
        path = None
        if main_process:
            try:
                problem = output_folder_problem(log_dir)
                if problem:
                    raise NotADirectoryError(20, problem, str(log_dir))
                path = _open_log_file(run_name, Path(log_dir))
            except OSError as err:
                print(f"error: --log_dir: {describe(err)}", file=sys.stderr)
                raise UserError(f"--log_dir: {describe(err)}") from None
        # With a file, tracebacks go there only: stderr keeps one line per error. (A format given as a function gets
        # no traceback appended; a format string always does.) diagnose=False: loguru would otherwise print every
        # local variable of a traceback (a token among them).
        logger.add(
            _RedactingSink(sys.stderr),
            level=level if main_process else "WARNING",
            format=(lambda _: _FORMAT + "\n") if path else _FORMAT,
            colorize=False,
            diagnose=False,
        )
        if path is not None:
            logger.add(
                _RedactingSink(path.open("a", encoding="utf-8"), owned=True),
                level="DEBUG",
                format=_FORMAT,
                diagnose=False,
            )
            logger.info("logging to {}", path)
        try:
            yield path
        except BaseException as err:
            report(err, path, interrupted)
            raise


def _route_stdlib_logging(undo: ExitStack) -> None:
    """Python logging into loguru: the root logger gets the intercepting handler (WARNING and up), and the libraries
    that keep their own stderr handler and stop propagation (transformers & co.) hand their records up instead."""
    root = logging.getLogger()
    level = root.level
    undo.callback(root.setLevel, level)
    undo.enter_context(patch_attribute(root, "handlers", [_InterceptHandler()]))
    root.setLevel(logging.WARNING)
    for name in LIBRARY_LOGGERS:
        library_logger = logging.getLogger(name)
        undo.enter_context(patch_attribute(library_logger, "handlers", []))
        undo.enter_context(patch_attribute(library_logger, "propagate", True))


# Warnings one library raises about another's API, which no recipe or flag can change (peft and TRL read
# transformers' renamed `is_gradient_checkpointing`).
_LIBRARY_WARNINGS = [r"`is_gradient_checkpointing` is deprecated"]


def _route_warnings(undo: ExitStack) -> None:
    """Python warnings into the same sinks, one line each, without the ones in _LIBRARY_WARNINGS; the filters and
    `warnings.showwarning` are restored when the run ends."""
    undo.enter_context(warnings.catch_warnings())
    warnings.showwarning = _log_warning
    for message in _LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    logger.opt(depth=2).warning("{}: {} ({}:{})", category.__name__, message, Path(filename).name, lineno)


def _open_log_file(run_name: str, log_dir: Path) -> Path:
    """`<log_dir>/<run_name>_<UTC time>.log`, and `<run_name>_latest.log` pointing at it (swapped atomically)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
    path = log_dir / f"{run_name}_{stamp}.log"
    path.touch()
    latest = log_dir / f"{run_name}_latest.log"
    tmp = log_dir / f".{run_name}_latest.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(path.name)
    os.replace(tmp, latest)
    return path


def _restore_loguru() -> None:
    """loguru as it is on import: one sink, stderr (closing the run's sinks flushes its log file)."""
    logger.remove()
    logger.add(sys.stderr)
