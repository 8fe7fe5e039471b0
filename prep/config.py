"""`python -m prep` options: one dataclass, parsed by transformers' HfArgumentParser (so `--help` documents every flag)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from paraphrx.buckets import DEFAULT_SPECS, BucketSpecError, parse_bucket_spec, split_name
from paraphrx.errors import UserError


class ConfigError(UserError):
    """A bad option value: one line naming the flag."""


@dataclass
class PrepConfig:
    data_paths: list[str] = field(
        default_factory=lambda: ["data/alpaca_gemma-2-2b-it.json"],
        metadata={
            "help": "Paraphrase JSON files (Alpaca, GSM8K, MMLU, ...), merged; the source is the file name's prefix before '_'."
        },
    )
    output_dir: str = field(
        default="data/paraphrx-alpaca", metadata={"help": "Dataset folder in Hub layout (replaced atomically)."}
    )
    buckets: list[str] = field(
        default_factory=lambda: list(DEFAULT_SPECS),
        metadata={
            "help": "Bucket specs, one training split each: 'N', 'A-B', 'A,B,C' or 'all' (1-4 -> split bucket1_4)."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of the train/validation/test split by prompt."})
    split: str = field(
        default="80/10/10", metadata={"help": "train/validation/test fractions by prompt: '80/10/10' or '0.8,0.1,0.1'."}
    )
    use_paraphrase_answer: bool = field(
        default=False, metadata={"help": "Train on each paraphrase's own answer instead of the source row's output."}
    )
    template: Literal["alpaca", "gemma"] = field(
        default="alpaca",
        metadata={"help": "Prompt template: the seed's Alpaca text, or Gemma's chat template (one user turn)."},
    )
    skip_invalid: bool = field(
        default=False, metadata={"help": "Drop invalid rows (and report them) instead of stopping."}
    )
    push_to_hub: str | None = field(
        default=None,
        metadata={"help": "Upload the folder to this Hub dataset repo (token: HF_TOKEN or `hf auth login`)."},
    )
    private: bool = field(
        default=False,
        metadata={"help": "Create the Hub repo as private; refuse to upload to an existing public repo."},
    )
    max_shard_mb: float = field(
        default=500, metadata={"help": "Upper bound on a parquet shard's uncompressed size in MB (> 0)."}
    )
    log_dir: str = field(default="logs", metadata={"help": "Folder for loguru log files."})

    def bucket_splits(self) -> dict[str, tuple[int, ...]]:
        """Split name -> buckets, in the order given; specs naming the same buckets collapse into one split."""
        splits: dict[str, tuple[int, ...]] = {}
        for spec in self.buckets:
            try:
                buckets = parse_bucket_spec(spec)
            except BucketSpecError as e:
                raise ConfigError(f"--buckets: {e}") from None
            splits.setdefault(split_name(buckets), buckets)
        if not splits:
            raise ConfigError("--buckets: give at least one bucket spec")
        return splits

    def split_fractions(self) -> tuple[float, float, float]:
        return parse_split_fractions(self.split)

    def shard_mb(self) -> float:
        return check_max_shard_mb(self.max_shard_mb)


def check_max_shard_mb(value: float) -> float:
    """`--max_shard_mb` must be a finite number > 0 (0 or less would write one shard per row)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"--max_shard_mb: expected a number of MB greater than 0, got {value!r}")
    return float(value)


def parse_split_fractions(text: str) -> tuple[float, float, float]:
    """'80/10/10' or '0.8,0.1,0.1' -> (0.8, 0.1, 0.1): three non-negative numbers that sum to 100 (percent) or 1.
    Any other sum is refused rather than silently rescaled (`90/10/10` is a typo, not 82/9/9)."""
    parts = [p for p in re.split(r"[/,:\s]+", str(text).strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or any(not v >= 0 for v in values) or values[0] <= 0 or sum(values) == float("inf"):
        raise ConfigError(
            f"--split: expected three non-negative train/validation/test fractions with train > 0 like '80/10/10', got {text!r}"
        )
    total = sum(values)
    if not any(math.isclose(total, whole, rel_tol=1e-6) for whole in (100, 1)):
        raise ConfigError(
            f"--split: {text} sums to {total:g}; give percentages that sum to 100 (80/10/10) or "
            "fractions that sum to 1 (0.8,0.1,0.1)"
        )
    return tuple(v / total for v in values)  # type: ignore[return-value]
