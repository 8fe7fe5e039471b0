"""One run per output folder: an `flock` on `.<name>.lock` beside it, which the kernel drops when the process dies.

The lock belongs to the path, not to the folder (hence beside it): `--overwrite_output_dir` swaps a new folder in at
the end. The holder writes who it is into the lock file (pid, host, command, start time), so a second process on
the same folder stops at once with one line naming it. Nothing is ever left to clean up by hand: a killed holder's
lock is gone with it, and the file is only read for the message.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path


class FolderInUseError(RuntimeError):
    """Another live process holds the folder; the message is one line naming it."""


def lock_path(folder: str | Path) -> Path:
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


def holder_description(text: str) -> str:
    try:
        who = json.loads(text)
        return f"pid {who['pid']} on {who['host']}, started {who['started']}: {who['command']}"
    except (ValueError, KeyError, TypeError):
        return "details unknown (it is still starting)"


class FolderLock:
    """An exclusive, non-blocking lock on a folder path, held until `release()` or the end of the process."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = lock_path(self.folder)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
                holder = holder_description(handle.read(4096))
            raise FolderInUseError(
                f"{self.folder} is in use by another run ({holder}); wait for it to end or choose another --output_dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        who = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": shlex.join([sys.executable, *sys.argv]),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(who).encode(), 0)
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the lock; the file stays (deleting it would race a new holder)
            self.fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
