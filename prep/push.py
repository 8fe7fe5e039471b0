"""Upload a prepared dataset folder to the Hugging Face Hub as a dataset repo (paraphrx/hub.py does the requests).

Old parquet shards in the repo are deleted in the same commit, so a re-push with fewer shards leaves no stale files
behind. `--private` never uploads to a repo that already exists as public.
"""

from __future__ import annotations

from pathlib import Path

from paraphrx.hub import create_repo, upload_folder


def push_folder(folder: str | Path, repo_id: str, private: bool = False, commit_message: str | None = None) -> str:
    """Create the dataset repo if needed and upload `folder` in one commit; return the commit URL.

    Raises PublicRepoError when `private` is asked for but `repo_id` already exists as a public repo."""
    repo_id = create_repo(repo_id, "dataset", private=private)
    return upload_folder(
        folder,
        repo_id,
        "dataset",
        commit_message or "paraphrx prep: upload prepared dataset",
        delete_patterns=["data/*.parquet", "prompt_split.json"],
    )
