"""Replace a folder as a whole: build it in a hidden sibling, then swap it in; on any error the old one stays.
(And a single file: `write_text_atomic` writes a temporary file and renames it.)

Used by every stage that writes a folder users load: the prepared dataset, the evaluation results, the tiny model,
and a training run that replaces a finished one (`--overwrite_output_dir`).

At every instant the path holds the old complete folder or the new one: on Linux both are exchanged by one
`renameat2(RENAME_EXCHANGE)`. Where that is unavailable (another OS, a file system without it) the old folder is
first renamed into `.<name>.old-*/` and the new one into place; a process killed between those two renames leaves
no folder at the path, and the next `atomic_folder` on it (or `recover_folder`) moves the old one back.
Leftovers of a killed run (`.<name>.tmp-*`, `.<name>.old-*`) are deleted by the next run on the same path, unless a
live process still owns them: each owner holds an `flock` on its folder, which the kernel drops when it dies.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loguru import logger

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h


@functools.cache
def _renameat2():
    return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28; None elsewhere


def exchange(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths in one atomic step; False where the OS or file system cannot (nothing moved)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # no RENAME_EXCHANGE here
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write to a temporary file in the same folder, then rename: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def leftover_prefix(out: Path, kind: str) -> str:
    """`.<name>.tmp-` (a folder being built) or `.<name>.old-` (a replaced folder on its way out)."""
    return f".{out.name}.{kind}-"


def owned_folder(parent: Path, prefix: str) -> tuple[Path, int]:
    """A new hidden folder in `parent` and an open descriptor holding its flock: it is ours until the fd closes.
    (Between mkdtemp and flock another run could take the empty folder for a leftover; we then fail, lose nothing.)"""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return path, fd


def _unowned(path: Path) -> bool:
    """Whether no live process holds `path` (we may take it), tried without waiting."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # held by a live owner, or a file system without flock: leave it alone
        return False
    finally:
        os.close(fd)  # our probe lock goes with it


def recover_folder(output_dir: str | Path) -> None:
    """Put back the old folder when a swap without RENAME_EXCHANGE was killed between its two renames."""
    out = Path(output_dir)
    if out.exists():
        return
    for old in sorted(out.parent.glob(leftover_prefix(out, "old") + "*")):
        if (old / out.name).is_dir() and _unowned(old):
            os.rename(old / out.name, out)
            logger.warning("{}: restored the previous folder from {} (a run was killed while replacing it)", out, old)
            return


def clean_leftovers(output_dir: str | Path) -> list[Path]:
    """Recover `output_dir` if needed, then delete the `.<name>.tmp-*` / `.<name>.old-*` siblings nobody owns."""
    out = Path(output_dir)
    if not out.parent.is_dir():
        return []
    recover_folder(out)
    removed = []
    for kind in ("tmp", "old"):
        for path in sorted(out.parent.glob(leftover_prefix(out, kind) + "*")):
            if path.is_dir() and _unowned(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    if removed:
        logger.info(
            "removed {} leftover folder(s) of a killed run beside {}: {}",
            len(removed),
            out,
            ", ".join(p.name for p in removed),
        )
    return removed


def swap_in(new: Path, output_dir: str | Path) -> None:
    """Move the complete folder `new` to `output_dir`, replacing what is there; the replaced folder is deleted."""
    out = Path(output_dir)
    if not out.exists():
        os.rename(new, out)
        return
    if exchange(new, out):
        shutil.rmtree(new, ignore_errors=True)  # `new` now names the old folder; a kill here leaves a leftover
        return
    old, fd = owned_folder(out.parent, leftover_prefix(out, "old"))
    try:
        os.rename(out, old / out.name)
        try:
            os.rename(new, out)
        except BaseException:
            os.rename(old / out.name, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        os.close(fd)


@contextmanager
def atomic_folder(output_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `output_dir`, on any error it is deleted."""
    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    tmp, fd = owned_folder(out.parent, leftover_prefix(out, "tmp"))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the dataset folder should look like any other
    try:
        yield tmp
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)
