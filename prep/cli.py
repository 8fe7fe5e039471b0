"""`python -m prep`: paraphrase JSON -> one Hub-layout dataset folder with a split per bucket range (+ optional push).

Steps: parse flags -> stream and validate every row (nothing is written before all rows pass) -> split prompts ->
pick each split's rows -> write parquet + card into a temporary folder -> rename into place -> push. Bad input ends
with one error line naming file, row and field, exit code 2, and no output folder. An `--output_dir` that cannot be
made (e.g. under a file) is one line naming the path, exit code 2; a failed push is one line, exit code 1; anything
else (a full disk) is a short line with its traceback in the log file, exit code 1 (paraphrx/errors.py).
"""

from __future__ import annotations

import json
import shlex
import sys
from importlib.metadata import version
from pathlib import Path

from loguru import logger

from paraphrx.atomic_folder import atomic_folder
from paraphrx.errors import describe, run_cli
from paraphrx.hub import hub_failures
from paraphrx.logs import plural, run_logging
from paraphrx.recipe_cli import parse_recipe_or_exit
from prep.card import render_card
from prep.config import ConfigError, PrepConfig
from prep.push import push_folder
from prep.rows import read_sources
from prep.split import assign_sides, held_out_prompts, select_rows, split_stats
from prep.writer import ensure_replaceable, write_splits


def run(config: PrepConfig, command: str) -> Path:
    """Build the dataset folder `config.output_dir` (and push it); returns the folder."""
    bucket_splits = config.bucket_splits()
    fractions = config.split_fractions()
    max_shard_mb = config.shard_mb()
    ensure_replaceable(config.output_dir)
    missing = [p for p in config.data_paths if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"--data_paths: {missing[0]}: no such file")

    data = read_sources(config.data_paths, config.use_paraphrase_answer, config.skip_invalid)
    logger.info(
        "read {} of {} from {}",
        plural(data.rows.num_rows, "paraphrase row"),
        plural(data.prompts.num_rows, "prompt"),
        plural(len(data.inputs), "file"),
    )
    if data.skipped:
        logger.warning("--skip_invalid dropped {} row(s): {}", len(data.skipped), data.skipped_summary())

    sides = assign_sides(
        data.prompts.column("source").to_pylist(),
        data.prompts.column("prompt_count").to_pylist(),
        fractions,
        config.seed,
    )
    split_rows = select_rows(data, sides, bucket_splits)
    # `datasets` cannot load a split without rows, so an empty split is left out (e.g. --split 100/0/0, --buckets 5).
    empty = [split for split, rows in split_rows.items() if len(rows) == 0]
    if empty:
        logger.warning("empty, not written: {}", ", ".join(empty))
        split_rows = {split: rows for split, rows in split_rows.items() if len(rows)}
    if not split_rows:
        raise ConfigError("--buckets/--split: every split would be empty")
    stats = split_stats(data, split_rows)
    held_out = held_out_prompts(data, sides)
    for split, st in stats.items():
        logger.info(
            "{}: {}, {}, by bucket {}",
            split,
            plural(st["rows"], "row"),
            plural(st["prompts"], "prompt"),
            st["by_bucket"],
        )

    out = Path(config.output_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # e.g. an --output_dir below a file: a flag to fix, not a crash
        raise ConfigError(f"--output_dir: {describe(err)}") from None
    with atomic_folder(out) as tmp:
        split_files = write_splits(tmp, data, split_rows, config.template, config.use_paraphrase_answer, max_shard_mb)
        versions = {pkg: version(pkg) for pkg in ("paraphrx", "pyarrow", "datasets")}
        card = render_card(
            name=out.name, command=command, config=config, bucket_splits=bucket_splits, split_files=split_files, stats=stats,
            held_out=held_out, inputs=data.inputs, skipped=data.skipped_summary(), versions=versions, empty=empty,
        )  # fmt: skip
        (tmp / "README.md").write_text(card, encoding="utf-8")
        split_doc = {
            "seed": config.seed,
            "fractions": dict(zip(("train", "validation", "test"), fractions)),
            **held_out,
        }
        (tmp / "prompt_split.json").write_text(json.dumps(split_doc, indent=1) + "\n", encoding="utf-8")
    logger.info("wrote {} ({})", out, plural(len(split_files), "split"))

    if config.push_to_hub:
        with hub_failures(f"--push_to_hub {config.push_to_hub}"):  # one line, exit code 1; the folder is complete
            url = push_folder(out, config.push_to_hub, private=config.private)
        logger.info("pushed to {}", url)
    return out


def prepare(config: PrepConfig, command: str) -> Path:
    """`run`, logged to stderr and logs/prep_*.log."""
    with run_logging("prep", log_dir=config.log_dir):
        logger.info("{}", command)
        return run(config, command)


def main(argv: list[str] | None = None) -> int:
    """The command line: the process's exit code (a bad flag is one line `error: ...`, exit 2)."""
    args = sys.argv[1:] if argv is None else argv
    (config,) = parse_recipe_or_exit(args, (PrepConfig,), prog="python -m prep", description=__doc__.split("\n\n")[0])
    return run_cli(prepare, config, "python -m prep " + shlex.join(args))
