"""Uploads to the Hugging Face Hub, for both stages that push: prep's dataset folder (`python -m prep --push_to_hub`)
and a training run's adapter folder (`push_to_hub: true`, `hub_model_id`).

The token is whatever huggingface_hub resolves: `HF_TOKEN` from the environment, else the one saved by
`hf auth login`; it is never passed on a command line or logged. Whatever keeps an upload from happening (no network,
`HF_HUB_OFFLINE=1`, no token, no permission) is one line naming the repo, exit code 1 (`PushError`), its traceback in
the log file only. A private push never goes to a repo that already exists as public: `create_repo(exist_ok=True)`
would leave its visibility alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from loguru import logger

from paraphrx.errors import EXIT_FAILED, UserError, one_line


class PushError(UserError):
    """The Hub could not be reached or refused the upload; the local folder is complete."""

    exit_code = EXIT_FAILED


class PublicRepoError(UserError):
    """A private push to a repo that exists and is public: refused before anything is uploaded (exit code 2)."""


@contextmanager
def hub_failures(what: str, after: str = "") -> Iterator[None]:
    """Any failure of a Hub request (huggingface_hub's HTTP, token, offline and transport errors) becomes
    `PushError("<what>: <Type>: <message><after>")`; the traceback goes to the log file."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        logger.opt(exception=True).debug("Hub request failed")
        raise PushError(f"{what}: {type(err).__name__}: {one_line(err)}{after}") from None


def create_repo(repo_id: str, repo_type: str, private: bool = False, private_flag: str = "--private") -> str:
    """Create the repo if needed; its full id (`user/name` for a bare `name`). Refuses (PublicRepoError) when
    `private` is asked for and the repo already exists as public."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api = HfApi()
    try:
        existing = api.repo_info(repo_id, repo_type=repo_type)
    except RepositoryNotFoundError:  # also what a repo we cannot see looks like; create_repo then says why
        existing = None
    if existing is not None and private and not existing.private:
        raise PublicRepoError(
            f"{private_flag}: the {repo_type} repo {repo_id} already exists and is public; refusing to upload "
            f"(make it private on the Hub first, or push without {private_flag})"
        )
    url = api.create_repo(repo_id, repo_type=repo_type, private=private or None, exist_ok=True)
    return getattr(url, "repo_id", None) or repo_id


def upload_folder(
    folder: str | Path,
    repo_id: str,
    repo_type: str,
    commit_message: str,
    delete_patterns: Sequence[str] | None = None,
    ignore_patterns: Sequence[str] | None = None,
) -> str:
    """Upload `folder` in one commit (deleting `delete_patterns` of an earlier push in the same commit); the commit
    URL."""
    from huggingface_hub import HfApi

    logger.info("uploading {} to {} ({})", folder, repo_id, repo_type)
    info = HfApi().upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type=repo_type,
        commit_message=commit_message,
        delete_patterns=list(delete_patterns) if delete_patterns else None,
        ignore_patterns=list(ignore_patterns) if ignore_patterns else None,
    )
    return str(getattr(info, "commit_url", info))
