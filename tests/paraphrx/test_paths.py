"""Local folder or Hub id, decided before anything loads: a mistyped path is named at once, never sent to the Hub."""

import pytest

from paraphrx.paths import local_folder_problem, looks_local, output_folder_problem, source_problem


@pytest.fixture
def here(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny-gemma2").mkdir()
    (tmp_path / "README.md").write_text("a file")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name, local", [
    ("./x", True), ("/abs/x", True), ("~/x", True), ("a/b/c", True), ("models\\x", True),
    ("models/tiny-gemma3", True),  # `models/` is a folder here: the path is local, whether or not it exists
    ("google/gemma-2-2b-it", False), ("gpt2", False),  # Hub ids: `name` or `org/name` whose org is no folder here
])  # fmt: skip
def test_what_can_only_be_a_local_path(here, name, local):
    assert looks_local(name) is local


def test_a_local_name_that_is_no_folder_is_named(here):
    assert local_folder_problem("models/tiny-gemma2") is None
    assert local_folder_problem("models/tiny-gemma3") == "no such folder"
    assert local_folder_problem("README.md") == "not a folder"
    assert local_folder_problem("google/gemma-2-2b-it") is None  # a Hub id: from_pretrained decides


def test_offline_a_hub_id_missing_from_the_cache_is_named_without_a_request(here, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(here / "hub-cache"))
    assert source_problem("org/not-cached") is None  # online: the Hub is asked
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert source_problem("org/not-cached") == (
        "neither a folder here nor in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading it"
    )
    assert source_problem("models/tiny-gemma2") is None  # a local folder needs no cache
    assert source_problem("models/tiny-gemma3") == "no such folder"


def test_an_output_folder_below_a_file_is_named(here):
    assert output_folder_problem("README.md/sub/deeper") == "README.md is not a folder"
    assert output_folder_problem("README.md") == "README.md is not a folder"
    assert output_folder_problem("outputs/new/run") is None and output_folder_problem(here / "models") is None
