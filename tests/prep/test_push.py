"""`--push_to_hub`: the folder goes up as a dataset repo with huggingface_hub; the token stays out of logs.
HfApi is replaced by a recorder (tests/conftest.py: FakeHfApi): tests never touch the network."""

import sys

import pytest
from loguru import logger

from prep.cli import main
from tests.conftest import FakeHfApi

TOKEN = "hf_" + "T0kenValueThatMustNeverBeLogged1234"


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    import huggingface_hub

    FakeHfApi.calls = []
    FakeHfApi.existing = {}
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


def _push_argv(tmp_path, gsm8k_path, *extra):
    return ["--data_paths", str(gsm8k_path), "--output_dir", str(tmp_path / "ds"), "--push_to_hub", "me/x", *extra]


def test_private_refuses_an_existing_public_repo(fake_hub, tmp_path, gsm8k_path, capfd):
    FakeHfApi.existing = {"me/x": False}
    assert main(_push_argv(tmp_path, gsm8k_path, "--private")) == 2
    names = [name for name, _ in fake_hub]
    assert "repo_info" in names and "upload_folder" not in names and "create_repo" not in names
    assert dict(fake_hub)["repo_info"] == {"repo_id": "me/x", "repo_type": "dataset"}
    err = capfd.readouterr().err
    (line,) = [line for line in err.splitlines() if "| ERROR" in line]
    assert "--private: the dataset repo me/x already exists and is public; refusing to upload" in line
    assert "Traceback" not in err


def test_private_uploads_to_an_existing_private_repo_and_public_push_to_public(fake_hub, tmp_path, gsm8k_path):
    FakeHfApi.existing = {"me/x": True}
    assert main(_push_argv(tmp_path, gsm8k_path, "--private")) == 0
    assert "upload_folder" in [name for name, _ in fake_hub]
    fake_hub.clear()
    FakeHfApi.existing = {"me/x": False}
    assert main(_push_argv(tmp_path, gsm8k_path)) == 0  # no --private asked: the public repo is fine
    assert "upload_folder" in [name for name, _ in fake_hub]


def test_push_failure_is_one_line_exit_1(fake_hub, tmp_path, gsm8k_path, capfd, monkeypatch):
    from huggingface_hub.errors import LocalTokenNotFoundError

    def no_token(self, repo_id, **kwargs):
        raise LocalTokenNotFoundError("Token is required (`token=True`), but no token found.\nRun `hf auth login`.")

    monkeypatch.setattr(FakeHfApi, "create_repo", no_token)
    assert main(_push_argv(tmp_path, gsm8k_path)) == 1
    err = capfd.readouterr().err
    (line,) = [line for line in err.splitlines() if "| ERROR" in line]
    assert line.endswith(
        "--push_to_hub me/x: LocalTokenNotFoundError: Token is required (`token=True`), "
        "but no token found. Run `hf auth login`."
    )
    assert "Traceback" not in err and (tmp_path / "ds" / "README.md").is_file()  # the local dataset is complete
