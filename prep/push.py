"""Upload a prepared dataset folder to the Hugging Face Hub as a dataset repo.

The token is whatever huggingface_hub resolves: `HF_TOKEN` from the environment, else the one saved by
`hf auth login`. It is never passed on a command line or logged. Old parquet shards in the repo are deleted
in the same commit, so a re-push with fewer shards leaves no stale files behind.
"""

from __future__ import annotations

from pathlib import Path

from loguru import logger


def push_folder(folder: str | Path, repo_id: str, private: bool = False, commit_message: str | None = None) -> str:
    """Create the dataset repo if needed and upload `folder` in one commit; return the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
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
