"""Upload a prepared dataset folder to the Hugging Face Hub as a dataset repo.

The token is whatever huggingface_hub resolves: `HF_TOKEN` from the environment, else the one saved by
`hf auth login`. It is never passed on a command line or logged. Old parquet shards in the repo are deleted
in the same commit, so a re-push with fewer shards leaves no stale files behind. `--private` never uploads to a
repo that already exists as public: `create_repo(exist_ok=True)` would leave its visibility alone.
"""

from __future__ import annotations

from pathlib import Path

from loguru import logger

from prep.config import ConfigError


def push_folder(folder: str | Path, repo_id: str, private: bool = False, commit_message: str | None = None) -> str:
    """Create the dataset repo if needed and upload `folder` in one commit; return the commit URL.

    Raises ConfigError when `private` is asked for but `repo_id` already exists as a public repo."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api = HfApi()
    try:
        existing = api.repo_info(repo_id, repo_type="dataset")
    except RepositoryNotFoundError:  # also what a repo we cannot see looks like; create_repo then says why
        existing = None
    if existing is not None and private and not existing.private:
        raise ConfigError(
            f"--private: the dataset repo {repo_id} already exists and is public; refusing to upload "
            "(make it private on the Hub first, or push without --private)"
        )
    url = api.create_repo(repo_id, repo_type="dataset", private=private or None, exist_ok=True)
    logger.info("uploading {} to {}", folder, url)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="dataset",
        commit_message=commit_message or "paraphrx prep: upload prepared dataset",
        delete_patterns=["data/*.parquet", "prompt_split.json"],
    )
    return str(getattr(info, "commit_url", info))
