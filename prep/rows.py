"""Validated source rows -> Arrow columns, one row per paraphrase, built incrementally (never a list of dicts).

Only what differs per paraphrase is stored per row; what every paraphrase of a prompt shares (`source`,
`prompt_count`, `input`, the reference `output`) is stored once per prompt and joined in by prompt id (`pid`) when a
row group is written, and the prompt/completion texts are rendered there too (prep.templates, Arrow kernels).
That keeps 3M rows in about 1 GB. Row-level columns are flushed into record batches every `CHUNK_ROWS` rows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from loguru import logger
from tqdm.auto import tqdm

from prep.reader import iter_rows, source_name
from prep.schema import ValidationError, validate_row

CHUNK_ROWS = 200_000
# 64-bit offsets: one column can exceed 2 GB (3M answers of ~1 KB), and it is kept as one chunk (`finish`).
ROW_SCHEMA = pa.schema(
    [("paraphrase", pa.large_string()), ("answer", pa.large_string()), ("instruct_type", pa.large_string()), ("bucket", pa.int64()),
     ("task_score", pa.float64()), ("pid", pa.int32())]
)  # fmt: skip
PROMPT_SCHEMA = pa.schema(
    [("source", pa.string()), ("prompt_count", pa.int64()), ("input", pa.string()), ("reference", pa.string())]
)


@dataclass
class SourceRows:
    """Everything read from the inputs: per-paraphrase rows, per-prompt fields (row `pid` = index here), provenance."""

    rows: pa.Table  # ROW_SCHEMA; `answer` is kept only with use_paraphrase_answer (else all null)
    prompts: pa.Table  # PROMPT_SCHEMA
    inputs: list[dict] = field(default_factory=list)  # path, source, sha256, bytes, rows
    skipped: list[ValidationError] = field(default_factory=list)

    def skipped_summary(self) -> dict[str, int]:
        return dict(Counter(e.reason for e in self.skipped).most_common())


class _Builder:
    def __init__(self, keep_answers: bool):
        self.keep_answers = keep_answers
        self.batches: list[pa.RecordBatch] = []
        self.cols: dict[str, list] = {name: [] for name in ROW_SCHEMA.names}
        self.prompt_cols: dict[str, list] = {name: [] for name in PROMPT_SCHEMA.names}
        self.seen: dict[tuple[str, int], str] = {}

    def check_unique(self, source: str, prompt_count: int, where: str) -> None:
        first = self.seen.setdefault((source, prompt_count), where)
        if first is not where:
            raise ValidationError(
                f"{prompt_count} duplicates {first} (source {source!r})", field="prompt_count", kind="duplicate"
            )

    def add(self, source: str, row: dict) -> None:
        pid = len(self.prompt_cols["source"])
        for name, value in (
            ("source", source),
            ("prompt_count", row["prompt_count"]),
            ("input", row.get("input", "")),
            ("reference", row["output"]),
        ):
            self.prompt_cols[name].append(value)
        paraphrases, cols = row["paraphrases"], self.cols
        cols["paraphrase"].extend([p["paraphrase"] for p in paraphrases])
        cols["answer"].extend([p["answer"] for p in paraphrases] if self.keep_answers else [None] * len(paraphrases))
        cols["instruct_type"].extend([p["instruct_type"] for p in paraphrases])
        cols["bucket"].extend([p["bucket"] for p in paraphrases])
        cols["task_score"].extend([p["task_score"] for p in paraphrases])
        cols["pid"].extend([pid] * len(paraphrases))
        if len(cols["pid"]) >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.cols["pid"]:
            self.batches.append(
                pa.RecordBatch.from_arrays([pa.array(self.cols[f.name], f.type) for f in ROW_SCHEMA], schema=ROW_SCHEMA)
            )
            for values in self.cols.values():
                values.clear()

    def finish(self) -> tuple[pa.Table, pa.Table]:
        self.flush()
        # One chunk per column: take() on a many-chunk column concatenates it first, on every call.
        rows = pa.Table.from_batches(self.batches, schema=ROW_SCHEMA).combine_chunks()
        self.batches = []
        prompts = pa.table(
            {f.name: pa.array(self.prompt_cols[f.name], f.type) for f in PROMPT_SCHEMA}, schema=PROMPT_SCHEMA
        )
        return rows, prompts


def read_sources(paths: list[str], keep_answers: bool = False, skip_invalid: bool = False) -> SourceRows:
    """Stream, validate and convert every file. Raises ValidationError on the first bad row unless `skip_invalid`;
    file-level problems (not UTF-8, broken JSON, not a list) always raise. `keep_answers` for --use_paraphrase_answer."""
    builder = _Builder(keep_answers)
    inputs, skipped = [], []
    total = sum(Path(p).stat().st_size for p in paths)
    with tqdm(total=total, unit="B", unit_scale=True, desc="read + validate", mininterval=1.0) as bar:
        for path in paths:
            source, digest, n_rows = source_name(path), {}, 0
            for index, row in iter_rows(path, bar, digest):
                n_rows += 1
                try:
                    validate_row(row)
                    builder.check_unique(source, row["prompt_count"], f"row {index} of {path}")
                    builder.add(source, row)
                except ValidationError as e:
                    e.locate(path, index)
                    if not skip_invalid:
                        raise
                    logger.warning("skipping {}", e)
                    skipped.append(e)
            inputs.append(
                {
                    "path": str(path),
                    "source": source,
                    "sha256": digest["sha256"],
                    "bytes": Path(path).stat().st_size,
                    "rows": n_rows,
                }
            )
    rows, prompts = builder.finish()
    if prompts.num_rows == 0:
        raise ValidationError("no valid rows in any input file", path=", ".join(map(str, paths)))
    return SourceRows(rows, prompts, inputs, skipped)
