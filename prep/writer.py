"""Write the prepared dataset as one Hub-layout folder, atomically.

Layout: `README.md` (dataset card with the `configs:` header) + `data/<split>-00000-of-0000N.parquet` shards, the
names `push_to_hub` uses. Everything goes to a hidden temporary sibling folder first and is renamed into place at the
end, so a crash or a bad input never leaves a half-written dataset and the previous one stays intact until the swap.
Shards are written by a thread pool: pyarrow's take and parquet encoding release the GIL.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from paraphrx.paths import output_folder_problem
from prep.config import ConfigError, check_max_shard_mb
from prep.rows import SourceRows
from prep.templates import completion_column, prompt_column

CARD_MARKER = "paraphrx-prepared-dataset"  # a tag in every card we write; only such folders may be replaced
# The contract's columns, in its order.
SCHEMA = pa.schema(
    [("prompt", pa.string()), ("completion", pa.string()), ("reference", pa.string()), ("source", pa.string()),
     ("prompt_count", pa.int64()), ("instruct_type", pa.string()), ("paraphrase", pa.string()), ("input", pa.string()),
     ("bucket", pa.int64()), ("task_score", pa.float64())]
)  # fmt: skip
COLUMNS = tuple(SCHEMA.names)
ROW_GROUP_BYTES = 64 << 20


def ensure_replaceable(output_dir: str | Path) -> None:
    """Refuse to replace a folder that is not a dataset written by prep (e.g. `--output_dir data`)."""
    out = Path(output_dir)
    problem = output_folder_problem(out)  # it, or a folder above it, is a file
    if problem:
        raise ConfigError(f"--output_dir {out}: {problem}")
    if not out.exists():
        return
    card = out / "README.md"
    if any(out.iterdir()) and not (
        card.is_file() and CARD_MARKER in card.read_text(encoding="utf-8", errors="replace")
    ):
        raise ConfigError(
            f"--output_dir: {out} exists and is not a dataset written by `python -m prep`; refusing to replace it"
        )


def _row_bytes(data: SourceRows, template: str) -> float:
    """Average uncompressed bytes of one output row, to size shards and row groups."""
    rows, prompts = data.rows, data.prompts
    per_prompt = sum(
        pc.binary_length(prompts.column(c)).to_numpy(zero_copy_only=False) for c in ("source", "input", "reference")
    )
    pid = rows.column("pid").to_numpy()
    shared = (
        2 * float(per_prompt[pid].mean()) if len(pid) else 0.0
    )  # input and reference (or completion) are copied per row
    paraphrase = pc.sum(pc.binary_length(rows.column("paraphrase"))).as_py() or 0
    return rows.nbytes / max(rows.num_rows, 1) + paraphrase / max(rows.num_rows, 1) + shared + len(template) + 300


def materialize(
    data: SourceRows, indices: np.ndarray, template: str = "alpaca", use_paraphrase_answer: bool = False
) -> pa.Table:
    """The output rows at `indices`, columns in the contract's order: per-prompt fields joined in by prompt id,
    prompt and completion rendered from the template."""
    part = data.rows.take(pa.array(indices))
    part = part.cast(pa.schema([f.with_type(pa.string()) if f.type == pa.large_string() else f for f in part.schema]))
    joined = data.prompts.take(part.column("pid"))
    paraphrase, input_text, reference = part.column("paraphrase"), joined.column("input"), joined.column("reference")
    answer = part.column("answer") if use_paraphrase_answer else reference
    columns = {
        "prompt": prompt_column(template, paraphrase, input_text),
        "completion": completion_column(template, answer),
        "reference": reference,
        "source": joined.column("source"),
        "prompt_count": joined.column("prompt_count"),
        "instruct_type": part.column("instruct_type"),
        "paraphrase": paraphrase,
        "input": input_text,
        "bucket": part.column("bucket"),
        "task_score": part.column("task_score"),
    }
    return pa.table({name: columns[name] for name in COLUMNS}, schema=SCHEMA)


def shard_paths(split: str, n_shards: int) -> list[str]:
    return [f"data/{split}-{i:05d}-of-{n_shards:05d}.parquet" for i in range(n_shards)]


def write_splits(folder: Path, data: SourceRows, split_rows: dict[str, np.ndarray], template: str = "alpaca",
                 use_paraphrase_answer: bool = False, max_shard_mb: float = 500) -> dict[str, dict]:  # fmt: skip
    """Write each split's rows (indices into `data.rows`) as parquet shards under `folder/data`. Returns, per split,
    its `files`, `num_examples`, `num_bytes` (Arrow, uncompressed) and `download_size` (parquet bytes), as the card's
    `dataset_info` records them. A shard is written one row group at a time: memory stays at the source table plus a
    few row groups."""
    max_shard_mb = check_max_shard_mb(max_shard_mb)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    row_bytes = _row_bytes(data, template)
    shard_rows = max(1, int(min(max_shard_mb * 1e6 / row_bytes, 2**62)))
    group_rows = max(1, min(shard_rows, int(ROW_GROUP_BYTES / row_bytes)))
    jobs, written = [], {}
    for split, indices in split_rows.items():
        n_shards = max(1, -(-len(indices) // shard_rows))
        written[split] = shard_paths(split, n_shards)
        jobs += [(folder / path, part) for path, part in zip(written[split], np.array_split(indices, n_shards))]

    def write(job) -> tuple[int, int]:
        path, part = job
        nbytes = 0
        with pq.ParquetWriter(path, SCHEMA, compression="snappy") as writer:
            for start in range(0, len(part), group_rows):
                table = materialize(data, part[start : start + group_rows], template, use_paraphrase_answer)
                writer.write_table(table, row_group_size=group_rows)
                nbytes += table.nbytes
        return len(part), nbytes

    total = sum(len(i) for i in split_rows.values())
    nbytes: dict[Path, int] = {}
    with (
        ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
        tqdm(total=total, unit="rows", desc="write parquet") as bar,
    ):
        for (path, _), (n, size) in zip(jobs, pool.map(write, jobs)):
            nbytes[path] = size
            bar.update(n)
    return {
        split: {
            "files": files,
            "num_examples": int(len(split_rows[split])),
            "num_bytes": sum(nbytes[folder / f] for f in files),
            "download_size": sum((folder / f).stat().st_size for f in files),
        }
        for split, files in written.items()
    }
