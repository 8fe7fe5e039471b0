"""The prepared folder: Hub layout, contract columns, counts that add up to `count_in_buckets`, a card that tells how
it was built, atomic replacement, and the load round trip through `load_prepared` and `load_dataset`."""

import hashlib
import json
from collections import Counter

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import load_dataset

from paraphrx.buckets import DEFAULT_SPECS, parse_bucket_spec, split_name
from paraphrx.dataset_io import load_prepared
from prep.cli import run
from prep.config import ConfigError, PrepConfig
from prep.templates import alpaca_prompt

COLUMNS = [
    "prompt",
    "completion",
    "reference",
    "source",
    "prompt_count",
    "instruct_type",
    "paraphrase",
    "input",
    "bucket",
    "task_score",
]
TYPES = ["string", "string", "string", "string", "int64", "string", "string", "string", "int64", "double"]
BUCKET_SPLITS = [split_name(parse_bucket_spec(s)) for s in DEFAULT_SPECS]
SPLITS = BUCKET_SPLITS + ["validation", "test"]


@pytest.fixture(scope="module")
def sources(alpaca_path, gsm8k_path):
    return {
        name: json.loads(p.read_text(encoding="utf-8")) for name, p in (("alpaca", alpaca_path), ("gsm8k", gsm8k_path))
    }


@pytest.fixture(scope="module")
def splits(prepared_dataset_dir):
    return {split: load_prepared(str(prepared_dataset_dir), split).to_pandas() for split in SPLITS}


def test_hub_layout_and_card_header(prepared_dataset_dir):
    card = (prepared_dataset_dir / "README.md").read_text(encoding="utf-8")
    header = yaml.safe_load(card.split("---\n")[1])
    files = header["configs"][0]["data_files"]
    assert header["configs"][0]["config_name"] == "default"
    assert [f["split"] for f in files] == SPLITS
    assert all(f["path"] == f"data/{f['split']}-*.parquet" for f in files)
    shards = sorted(p.name for p in (prepared_dataset_dir / "data").iterdir())
    assert shards == sorted(f"{s}-00000-of-00001.parquet" for s in SPLITS)


def test_parquet_schema_is_the_contract(prepared_dataset_dir):
    for shard in (prepared_dataset_dir / "data").iterdir():
        schema = pq.read_schema(shard)
        assert schema.names == COLUMNS
        assert [str(t) for t in schema.types] == TYPES


def test_load_dataset_and_load_prepared_agree(prepared_dataset_dir, splits):
    direct = load_dataset(str(prepared_dataset_dir), split="bucket1_4").to_pandas()
    assert direct.equals(splits["bucket1_4"])
    only_1_2 = load_prepared(str(prepared_dataset_dir), "bucket1_5", buckets=(1, 2)).to_pandas()
    assert only_1_2.reset_index(drop=True).equals(splits["bucket1_2"].reset_index(drop=True))


def test_counts_match_count_in_buckets(splits, sources):
    """Per prompt and bucket: the training prompts' rows in bucket1_5, or the held-out prompts' rows, equal the input."""
    train = splits["bucket1_5"]
    held = pd.concat([splits["validation"], splits["test"]])
    got = Counter(zip(train.source, train.prompt_count, train.bucket)) + Counter(
        zip(held.source, held.prompt_count, held.bucket)
    )
    for source, rows in sources.items():
        for row in rows:
            for bucket, n in enumerate(row["count_in_buckets"], start=1):
                assert got[(source, row["prompt_count"], bucket)] == n
    for split, buckets in zip(BUCKET_SPLITS, [(1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), (1, 2, 3, 4, 5)]):
        assert set(splits[split].bucket) <= set(buckets)
        assert len(splits[split]) == train.bucket.isin(buckets).sum()


def test_splits_are_disjoint_by_prompt_and_held_out_is_complete(splits, sources):
    key = lambda df: set(zip(df.source, df.prompt_count))  # noqa: E731
    train, validation, test = key(splits["bucket1_5"]), key(splits["validation"]), key(splits["test"])
    assert validation and test and not (train & validation) and not (train & test) and not (validation & test)
    assert len(train | validation | test) == 20
    for source in ("alpaca", "gsm8k"):  # each source reaches both held-out splits
        assert any(s == source for s, _ in validation) and any(s == source for s, _ in test)
    by_key = {(s, r["prompt_count"]): r for s, rows in sources.items() for r in rows}
    for split in ("validation", "test"):
        df = splits[split]
        for k in key(df):
            assert (df.source == k[0]).mul(df.prompt_count == k[1]).sum() == len(by_key[k]["paraphrases"])


def test_row_text_follows_the_template(splits, sources):
    by_key = {(s, r["prompt_count"]): r for s, rows in sources.items() for r in rows}
    df = splits["bucket1_5"]
    for row in df.sample(200, random_state=0).itertuples():
        src = by_key[(row.source, row.prompt_count)]
        assert row.prompt == alpaca_prompt(row.paraphrase, src["input"])
        assert row.completion == row.reference == src["output"]
        assert row.input == src["input"]
        match = [p for p in src["paraphrases"] if p["instruct_type"] == row.instruct_type]
        assert match and match[0]["bucket"] == row.bucket and match[0]["task_score"] == row.task_score


def test_card_tells_counts_command_and_checksums(prepared_dataset_dir, splits, alpaca_path, gsm8k_path):
    card = (prepared_dataset_dir / "README.md").read_text(encoding="utf-8")
    for path in (alpaca_path, gsm8k_path):
        assert hashlib.sha256(path.read_bytes()).hexdigest() in card
    assert f"python -m prep --data_paths {alpaca_path} {gsm8k_path}" in card
    assert "seed: 42" in card
    for split, df in splits.items():
        by_bucket = [int((df.bucket == b).sum()) for b in range(1, 6)]
        prompts = len(set(zip(df.source, df.prompt_count)))
        line = f"| `{split}` | {prompts} | {len(df)} | " + " | ".join(map(str, by_bucket))
        assert line in card
    split_doc = json.loads((prepared_dataset_dir / "prompt_split.json").read_text())
    assert sorted(split_doc["test"]["alpaca"]) == sorted(
        set(splits["test"].prompt_count[splits["test"].source == "alpaca"])
    )


def test_gemma_template_and_paraphrase_answers_with_shards(tmp_path, gsm8k_path, sources):
    config = PrepConfig(
        data_paths=[str(gsm8k_path)],
        output_dir=str(tmp_path / "g"),
        template="gemma",
        use_paraphrase_answer=True,
        buckets=["1,3", "all"],
        max_shard_mb=0.05,
    )
    out = run(config, command="test")
    shards = sorted(p.name for p in (out / "data").glob("bucket1_5-*"))
    assert len(shards) > 1 and shards[-1] == f"bucket1_5-{len(shards) - 1:05d}-of-{len(shards):05d}.parquet"
    df = load_prepared(str(out), "bucket1_5").to_pandas()
    assert len(df) == sum(pq.read_metadata(out / "data" / s).num_rows for s in shards)
    answers = {(r["prompt_count"], p["instruct_type"]): p["answer"] for r in sources["gsm8k"] for p in r["paraphrases"]}
    for row in df.itertuples():
        assert row.prompt == f"<start_of_turn>user\n{row.paraphrase.strip()}<end_of_turn>\n<start_of_turn>model\n"
        assert row.completion == answers[(row.prompt_count, row.instruct_type)] + "<end_of_turn>\n"
        assert row.reference.endswith(row.reference.split("####")[-1]) and "####" in row.reference
    assert set(load_prepared(str(out), "bucket1and3").to_pandas().bucket) <= {1, 3}


def test_replace_is_atomic_and_keeps_previous_on_crash(tmp_path, gsm8k_path, monkeypatch):
    out = tmp_path / "ds"
    config = PrepConfig(data_paths=[str(gsm8k_path)], output_dir=str(out))
    run(config, command="first")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    import prep.writer

    calls, real = [], prep.writer.materialize

    def crash_on_third_row_group(*args, **kwargs):  # some shards are written by then
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(prep.writer, "materialize", crash_on_third_row_group)
    with pytest.raises(RuntimeError, match="disk full"):
        run(PrepConfig(data_paths=[str(gsm8k_path)], output_dir=str(out), seed=7), command="second")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary folder left behind
    monkeypatch.undo()

    run(PrepConfig(data_paths=[str(gsm8k_path)], output_dir=str(out), seed=7, buckets=["1"]), command="third")
    assert sorted(p.name for p in (out / "data").iterdir())[0] == "bucket1-00000-of-00001.parquet"
    assert not list((out / "data").glob("bucket1_2-*"))  # old splits do not linger
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_refuses_to_replace_a_folder_prep_did_not_write(tmp_path, gsm8k_path):
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "mine.json").write_text("[]")
    with pytest.raises(ConfigError, match="refusing to replace"):
        run(PrepConfig(data_paths=[str(gsm8k_path)], output_dir=str(precious)), command="test")
    assert (precious / "mine.json").read_text() == "[]"


def test_same_inputs_give_identical_files(tmp_path, gsm8k_path, alpaca_path):
    outs = [
        run(PrepConfig(data_paths=[str(p) for p in paths], output_dir=str(tmp_path / n)), command="same")
        for n, paths in (("a", [alpaca_path, gsm8k_path]), ("b", [gsm8k_path, alpaca_path]))
    ]
    for shard in (outs[0] / "data").iterdir():
        assert pq.read_table(shard).equals(pq.read_table(outs[1] / "data" / shard.name))


def test_rebuilt_folder_loads_the_new_build_not_the_cache(tmp_path, gsm8k_path, alpaca_path):
    """`datasets` keys its cache for a local folder on the folder name and the card; without `dataset_info` in the
    card, a rebuilt folder silently loaded the previous build from ~/.cache."""
    out = tmp_path / "same-name"
    run(PrepConfig(data_paths=[str(gsm8k_path)], output_dir=str(out)), command="first")
    assert set(load_dataset(str(out), split="bucket1_5")["source"]) == {"gsm8k"}
    run(PrepConfig(data_paths=[str(alpaca_path)], output_dir=str(out), template="gemma"), command="second")
    rebuilt = load_dataset(str(out), split="bucket1_5")
    assert set(rebuilt["source"]) == {"alpaca"} and rebuilt[0]["prompt"].startswith("<start_of_turn>user\n")
    header = yaml.safe_load((out / "README.md").read_text(encoding="utf-8").split("---\n")[1])
    assert {s["name"]: s["num_examples"] for s in header["dataset_info"]["splits"]}["bucket1_5"] == len(rebuilt)


def test_empty_splits_are_left_out(tmp_path, gsm8k_path):
    """gsm8k's bucket 5 is empty and --split 100/0/0 holds nothing out: those splits are not written (datasets cannot
    load a split without rows); the others load."""
    out = run(
        PrepConfig(data_paths=[str(gsm8k_path)], output_dir=str(tmp_path / "e"), split="100/0/0", buckets=["5", "1-2"]),
        command="e",
    )
    header = yaml.safe_load((out / "README.md").read_text(encoding="utf-8").split("---\n")[1])
    assert [f["split"] for f in header["configs"][0]["data_files"]] == ["bucket1_2"]
    assert sorted(p.name for p in (out / "data").iterdir()) == ["bucket1_2-00000-of-00001.parquet"]
    assert "not written" in (out / "README.md").read_text(encoding="utf-8") and "`bucket5`, `validation`, `test`" in (
        out / "README.md"
    ).read_text(encoding="utf-8")
    assert len(load_prepared(str(out), "bucket1_2")) == 88 - sum(
        p["bucket"] > 2 for r in json.loads(gsm8k_path.read_text()) for p in r["paraphrases"]
    )


@pytest.mark.parametrize("max_shard_mb", [0, -5.0])
def test_write_splits_refuses_a_shard_size_of_zero_or_less(tmp_path, gsm8k_path, max_shard_mb):
    """Without the check, 0 MB made one parquet file per row."""
    import numpy as np

    from prep.rows import read_sources
    from prep.writer import write_splits

    data = read_sources([str(gsm8k_path)], False, False)
    with pytest.raises(ConfigError, match="--max_shard_mb"):
        write_splits(tmp_path, data, {"test": np.arange(data.rows.num_rows)}, max_shard_mb=max_shard_mb)
    assert not (tmp_path / "data").exists()
