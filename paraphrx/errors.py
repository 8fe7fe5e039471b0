"""How every entry point ends: `train_sft.py`, `evaluate_paraphrx.py`, `python -m prep` (and the label-mask view,
`python -m paraphrx.label_mask`) share this one error path.

- A **user error** (`UserError` and its subclasses: a bad recipe, flag or input file, a run folder in the way, data
  or a model that cannot be loaded) is one line that says what to fix, and its `exit_code`.
- **Anything else** is a bug or a failing machine (a full disk, a CUDA error): its traceback goes to the run's log
  file, secrets masked, and one short line to stderr; exit code 1.
- Ctrl-C is one line saying what was kept and how to go on (`run_logging(interrupted=...)`), exit code 130; before
  a run starts (while the libraries load) it is one line too (`one_line_interrupts`).

An error is reported while the run's logging is still open (`logs.run_logging` calls `report`), so the line and the
traceback reach the log file; the entry point then only turns it into the process's exit code (`run_cli`). Bad
command lines are reported by the parser itself (`recipe_cli.parse_recipe_or_exit`), before any log exists.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from loguru import logger

EXIT_FAILED = 1  # the run could not do its work: an input it needs is missing or unreachable, a run is in the way
EXIT_BAD_INPUT = 2  # the user must fix what was given: a recipe key, a flag, an input file's contents
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class UserError(Exception):
    """A failure the user can fix; the message is one line meant for them, `exit_code` ends the process."""

    exit_code = EXIT_BAD_INPUT


def one_line(err: BaseException) -> str:
    """An exception's message on one line (Hub and transformers errors span several)."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


def describe(err: BaseException) -> str:
    """One line for the user: `<path>: <what>` for a file system error (e.g. `afile: File exists`); the type and the
    message for any other OSError, whose message alone may not say what failed (`ConnectionError: Connection reset
    by peer`); the message of anything else."""
    if not isinstance(err, OSError):
        return one_line(err)
    if err.filename is not None and err.strerror:
        paths = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else str(err.filename)
        return f"{paths}: {err.strerror}"
    return f"{type(err).__name__}: {one_line(err)}"


@contextmanager
def loading(what: str, error: type[UserError]) -> Iterator[None]:
    """Around loading `what` (a model, a tokenizer, a dataset) from disk or the Hub: an OSError (not found, not
    readable, the Hub's HTTP, connection and offline errors) or a ValueError (not a model, a bad split) becomes
    `error("<what>: <describe(err)>")`. Only loading is wrapped this way: an OSError while training or writing
    results (a full disk) keeps its traceback."""
    try:
        yield
    except (OSError, ValueError) as err:
        raise error(f"{what}: {describe(err)}") from None


def report(err: BaseException, log_file: Path | None = None, interrupted: Callable[[], str] | None = None) -> None:
    """Log what ends a run: a user error as its one line; Ctrl-C as one line, with `interrupted()` saying how to go on;
    anything else as a short line on stderr and, when there is a log file, its full traceback there (logs.py keeps
    tracebacks out of stderr where a file has them)."""
    if isinstance(err, UserError):
        logger.error("{}", err)
    elif isinstance(err, KeyboardInterrupt):
        logger.error("interrupted{}", f": {interrupted()}" if interrupted is not None else "")
    elif isinstance(err, Exception):
        where = f" (traceback in {log_file})" if log_file is not None else ""
        logger.opt(exception=err).error("{}: {}{}", type(err).__name__, one_line(err), where)


def exit_code(err: BaseException) -> int:
    """The process's exit code for what ended an entry point."""
    if isinstance(err, UserError):
        return err.exit_code
    return EXIT_INTERRUPTED if isinstance(err, KeyboardInterrupt) else EXIT_FAILED


def run_cli(main: Callable[..., object], *args) -> int:
    """`main(*args)` for an entry point: exit code 0 when it returns, else `exit_code` of what it raised. The error
    was reported where it was raised (`report`, from `logs.run_logging`); here it only becomes the exit code."""
    try:
        main(*args)
    except (Exception, KeyboardInterrupt) as err:
        return exit_code(err)
    return 0


def one_line_interrupts() -> None:
    """Ctrl-C before a run has started (an entry point spends seconds importing torch and transformers) ends in one
    line instead of the importing modules' traceback; Python still exits by SIGINT (130 in a shell). Called by the
    entry scripts before their heavy imports."""

    def hook(kind, value, traceback):
        if issubclass(kind, KeyboardInterrupt):
            print("interrupted while starting; nothing was written", file=sys.stderr)
        else:
            sys.__excepthook__(kind, value, traceback)

    sys.excepthook = hook
