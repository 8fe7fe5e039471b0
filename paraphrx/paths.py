"""Local folder or Hub id: decided before anything is loaded, so a mistyped path is named at once.

transformers and datasets read a name as a local folder only when it exists; anything else is sent to the Hub, which
without a network means ~50 s of retries and then "couldn't connect to huggingface.co", the path never named (with
`HF_HUB_OFFLINE=1`: "couldn't find them in the cached files"). A name can only be a local path when it starts with
`.`, `/` or `~`, has more than one `/` (a Hub id is `name` or `org/name`), or its first part is a folder here
(`models/tiny-gemma3` beside `models/`); such a name that is no folder is refused here, naming the key it came from.
The same for output folders: `--output_dir README.md/sub` is "README.md is not a folder", not "File exists".
"""

from __future__ import annotations

from pathlib import Path


def looks_local(name: str) -> bool:
    """Whether `name` can only mean a path on this machine (see the module docstring)."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return True
    first, _, rest = name.partition("/")
    return bool(rest) and Path(first).is_dir()


def local_folder_problem(name: str) -> str | None:
    """Why `name`, read as a local folder, cannot be one ("no such folder", "not a folder"); None when it is one or
    when it can be a Hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        return None
    if path.exists():
        return "not a folder"
    return "no such folder" if looks_local(name) else None


def uncached_offline(repo_id: str, revision: str | None = None, filename: str = "config.json") -> bool:
    """Whether `repo_id` is a Hub id that `HF_HUB_OFFLINE=1` keeps from being downloaded and the local Hugging Face
    cache does not hold (its `filename`)."""
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.HF_HUB_OFFLINE or Path(repo_id).expanduser().is_dir():
        return False
    try:
        return not isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)
    except ValueError:  # not a valid repo id: from_pretrained names it
        return False


def source_problem(name: str, revision: str | None = None, filename: str = "config.json") -> str | None:
    """Why a model, tokenizer or adapter named `name` cannot be loaded without asking the Hub, or None."""
    problem = local_folder_problem(name)
    if problem is None and uncached_offline(name, revision, filename):
        problem = (
            "neither a folder here nor in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading it"
        )
    return problem


def output_folder_problem(path: str | Path) -> str | None:
    """Why `path` cannot become a folder: it, or a folder above it, is a file (mkdir would say "File exists")."""
    path = Path(path).expanduser()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else f"{candidate} is not a folder"
    return None
