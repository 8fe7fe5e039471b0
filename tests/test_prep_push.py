"""`--push_to_hub`: the folder goes up as a dataset repo with huggingface_hub; the token stays out of logs.
HfApi is replaced by a recorder: tests never touch the network."""

import sys

import pytest
from loguru import logger

from prep.cli import main

TOKEN = "hf_" + "T0kenValueThatMustNeverBeLogged1234"


class FakeHfApi:
    calls: list = []

    def __init__(self, token=None, **kwargs):
        self.calls.append(("init", {"token": token, **kwargs}))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, **kwargs):
        from pathlib import Path

        kwargs["files"] = sorted(
            str(p.relative_to(kwargs["folder_path"])) for p in Path(kwargs["folder_path"]).rglob("*") if p.is_file()
        )
        self.calls.append(("upload_folder", kwargs))
        return type(
            "CommitInfo", (), {"commit_url": f"https://huggingface.co/datasets/{kwargs['repo_id']}/commit/abc"}
        )()


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    import huggingface_hub

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    yield FakeHfApi.calls
    logger.remove()
    logger.add(sys.stderr)


def test_push_uploads_the_folder_as_a_dataset_repo(fake_hub, tmp_path, gsm8k_path, capfd):
    out = tmp_path / "ds"
    argv = [
        "--data_paths",
        str(gsm8k_path),
        "--output_dir",
        str(out),
        "--push_to_hub",
        "me/paraphrx-gsm8k",
        "--private",
    ]
    assert main(argv) == 0
    calls = dict((name, kwargs) for name, kwargs in fake_hub)
    assert calls["init"]["token"] is None  # huggingface_hub resolves HF_TOKEN (or the saved login) itself
    assert calls["create_repo"] == {
        "repo_id": "me/paraphrx-gsm8k",
        "repo_type": "dataset",
        "private": True,
        "exist_ok": True,
    }
    upload = calls["upload_folder"]
    assert (
        upload["repo_id"] == "me/paraphrx-gsm8k"
        and upload["repo_type"] == "dataset"
        and upload["folder_path"] == str(out)
    )
    assert "README.md" in upload["files"] and "data/bucket1_4-00000-of-00001.parquet" in upload["files"]
    assert "data/*.parquet" in upload["delete_patterns"]  # stale shards of an earlier push go in the same commit
    err = capfd.readouterr().err
    assert "pushed to https://huggingface.co/datasets/me/paraphrx-gsm8k/commit/abc" in err
    assert TOKEN not in err and TOKEN not in (tmp_path / "logs" / "prep_latest.log").read_text()


def test_public_by_default_and_no_push_on_bad_input(fake_hub, tmp_path, gsm8k_path):
    assert main(["--data_paths", str(gsm8k_path), "--output_dir", str(tmp_path / "ds"), "--push_to_hub", "me/x"]) == 0
    assert dict(fake_hub)["create_repo"]["private"] is None  # the account's default visibility
    fake_hub.clear()
    bad = tmp_path / "gsm8k_bad.json"
    bad.write_text("[1]")
    assert main(["--data_paths", str(bad), "--output_dir", str(tmp_path / "ds2"), "--push_to_hub", "me/x"]) == 2
    assert fake_hub == []
