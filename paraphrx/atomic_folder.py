"""Replace a folder as a whole: build it in a hidden sibling, then swap it in; on any error the old one stays.

Used by every stage that writes a folder users load: the prepared dataset, the evaluation results, the tiny model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_folder(output_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `output_dir`, on any error it is deleted."""
    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the dataset folder should look like any other
    try:
        yield tmp
        old = None
        if out.exists():  # two renames: directories cannot be swapped atomically, so keep the old one until the end
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old / out.name, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
