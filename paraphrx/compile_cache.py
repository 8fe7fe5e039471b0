"""One folder for torch.compile's caches, shared by training's fast path and the evaluation's decode engine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from loguru import logger

from paraphrx import library_internals as internals


def compile_cache_root() -> str:
    """Where the compile caches go unless TORCHINDUCTOR_CACHE_DIR says otherwise: a user cache folder that outlives a
    reboot, not inductor's default under /tmp."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "paraphrx", "torch_compile")


def _chosen_inductor_cache_dir() -> str | None:
    """TORCHINDUCTOR_CACHE_DIR as the user set it: inductor writes its own default there once imported."""
    value = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    default = internals.inductor_default_cache_dir()
    if value is None or (default is not None and os.path.abspath(value) == os.path.abspath(default)):
        return None
    return value


@contextmanager
def compile_cache_folder() -> Iterator[str]:
    """torch.compile's caches (inductor's FX graphs, AOTAutograd's, the Triton kernels, TRL's Triton kernels too) in
    one folder until the context ends; yields it. A TORCHINDUCTOR_CACHE_DIR or TRITON_CACHE_DIR the user set is kept;
    otherwise `compile_cache_root()`, with Triton's kernels in its `triton/`. The second and later runs (the five of
    `make train-all`, a resumed run, the next evaluation) find the first one's compiled graphs and kernels there.
    Runs sharing the folder at the same time are safe: torch and Triton write every entry under a temporary name
    and rename it into place, and an entry's key covers the code, shapes, settings and library versions it depends
    on."""
    root = _chosen_inductor_cache_dir() or compile_cache_root()
    values = {
        "TORCHINDUCTOR_CACHE_DIR": root,
        "TRITON_CACHE_DIR": os.environ.get("TRITON_CACHE_DIR") or os.path.join(root, "triton"),
    }
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        logger.info("compile caches in {}", root)
        yield root
    finally:  # inductor writes the variables too; put back what the process had
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
