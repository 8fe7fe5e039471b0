import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from paraphrx.dataset_io import load_prepared


def _write_folder(folder, completions, mtime):
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n"
        "  - split: bucket1\n    path: data/bucket1-*.parquet\n---\n"
    )
    shard = folder / "data" / "bucket1-00000-of-00001.parquet"
    pq.write_table(pa.table({"completion": completions, "bucket": [1, 2]}), shard)
    os.utime(shard, (mtime, mtime))


def test_rebuilt_folder_is_not_served_from_the_stale_cache(tmp_path):
    """Same folder name, same row count and byte size: the second build must still be the one loaded."""
    folder = tmp_path / "paraphrx-x"
    _write_folder(folder, ["aaaa", "bbbb"], mtime=1_000_000)
    assert load_prepared(str(folder), "bucket1")["completion"] == ["aaaa", "bbbb"]
    _write_folder(folder, ["cccc", "dddd"], mtime=2_000_000)
    assert load_prepared(str(folder), "bucket1")["completion"] == ["cccc", "dddd"]


def test_bucket_filter_and_unknown_split(tmp_path):
    _write_folder(tmp_path / "d", ["x", "y"], mtime=1_000_000)
    assert load_prepared(str(tmp_path / "d"), "bucket1", buckets=(2,))["completion"] == ["y"]
    with pytest.raises(ValueError, match=r"no split 'bucket1_4' \(it has: bucket1\)"):
        load_prepared(str(tmp_path / "d"), "bucket1_4")


def test_folder_without_card_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError, match="no README.md dataset card"):
        load_prepared(str(tmp_path), "bucket1")


def test_a_local_folder_that_is_not_there_is_named_not_sent_to_the_hub(tmp_path, monkeypatch):
    """`data/nope` beside `data/` was tried as a Hub dataset: ~30 s of retries, then "Couldn't reach 'data/nope'"."""
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        load_prepared("data/nope", "test")
    assert (err.value.filename, err.value.strerror) == ("data/nope", "no such folder; build it with `make prep`")
