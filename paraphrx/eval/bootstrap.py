"""Cluster bootstrap over prompts, vectorised: a statistic is computed once on the sample and once per replicate.

The paraphrases of one prompt are not independent answers, so the resampling unit is the prompt: a replicate draws
the P prompts of a source with replacement, and a prompt drawn k times counts k times. The draws are made once per
source (seeded) and reused for every model and statistic, so an adapter and the base are resampled on the same
prompts (a paired bootstrap) and so are the seeds of one recipe. The statistics are means over prompts or rows,
so a replicate is a matrix product: weights (1 + B, P) @ per-prompt sums (P,); row 0 of the weights is all ones,
the sample itself. Intervals are percentile intervals over the replicates in which the statistic is defined (a
replicate that drew none of its rows has none); a statistic resting on fewer than two prompts gets no interval,
since one prompt says nothing about the spread between prompts.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
MIN_PROMPTS = 2


def resampling_weights(n_prompts: int, replicates: int, seed: int, stream: str = "") -> np.ndarray:
    """(1 + replicates, n_prompts) float counts: row 0 all ones, row r how often replicate r drew each prompt.

    `stream` (the source's name) gives each source its own draws, the same whatever other sources are evaluated."""
    rng = np.random.default_rng([seed, zlib.crc32(stream.encode())])
    draws = rng.integers(0, n_prompts, size=(replicates, n_prompts))
    flat = (draws + n_prompts * np.arange(replicates)[:, None]).ravel()
    counts = np.bincount(flat, minlength=replicates * n_prompts).reshape(replicates, n_prompts)
    return np.vstack([np.ones((1, n_prompts)), counts]).astype(np.float64)


@dataclass(frozen=True)
class Stat:
    """A statistic on the sample and on every replicate, with what it rests on."""

    values: np.ndarray  # [sample, replicate 1, ..., replicate B]; NaN where undefined
    answers: int  # scored answers it rests on
    prompts: np.ndarray  # bool per prompt of the source: the prompts it rests on
    min_prompts: int  # fewest prompts behind any of its parts
    per_seed: dict[str, float | None] | None = None  # a seed average: each run's value on the sample

    @property
    def value(self) -> float | None:
        return None if np.isnan(self.values[0]) else float(self.values[0])

    @property
    def n_prompts(self) -> int:
        return int(self.prompts.sum())

    def interval(self, level: float = LEVEL) -> tuple[float, float] | None:
        replicates = self.values[1:]
        replicates = replicates[~np.isnan(replicates)]
        if self.value is None or self.min_prompts < MIN_PROMPTS or len(replicates) < 2:
            return None
        low, high = np.percentile(replicates, [50 * (1 - level), 50 * (1 + level)])
        return float(low), float(high)

    def combine(self, other: Stat, fn: Callable) -> Stat:
        """fn(self, other) replicate by replicate (a difference, a ratio); it rests on the rows of both. A seed
        average against a single run keeps each seed's own fn(seed, other)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            values = fn(self.values, other.values)
            per_seed = None
            if self.per_seed is not None and other.per_seed is None and other.value is not None:
                per_seed = {run: None if v is None else float(fn(v, other.value)) for run, v in self.per_seed.items()}
        return Stat(
            values,
            self.answers + other.answers,
            self.prompts | other.prompts,
            min(self.min_prompts, other.min_prompts),
            per_seed,
        )

    def __sub__(self, other: Stat) -> Stat:
        return self.combine(other, np.subtract)

    def to_dict(self) -> dict:
        interval = self.interval()
        out = {
            "value": self.value,
            "ci": list(interval) if interval else None,
            "answers": self.answers,
            "prompts": self.n_prompts,
        }
        if self.per_seed is not None:
            defined = [v for v in self.per_seed.values() if v is not None]
            out["sd"] = float(np.std(defined, ddof=1)) if len(defined) > 1 else None
            out["per_seed"] = self.per_seed
        return out


def ratio(weights: np.ndarray, numerator: np.ndarray, denominator: np.ndarray, answers: int) -> Stat | None:
    """sum(w * numerator) / sum(w * denominator) per weight row, over per-prompt sums; None without any row."""
    present = denominator > 0
    if not present.any():
        return None
    top, bottom = weights @ numerator, weights @ denominator
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(bottom > 0, top / bottom, np.nan)
    return Stat(values, answers, present, int(present.sum()))


def seed_average(stats: dict[str, Stat | None]) -> Stat | None:
    """Runs of one recipe that differ only in seed: the mean over seeds on the sample and on every replicate (so
    the interval is the bootstrap's for the seed average), keeping each seed's value (their sd is reported)."""
    present = [s for s in stats.values() if s is not None]
    if not present:
        return None
    return Stat(
        np.mean([s.values for s in present], axis=0),
        sum(s.answers for s in present),
        np.logical_or.reduce([s.prompts for s in present]),
        min(s.min_prompts for s in present),
        per_seed={run: None if s is None else s.value for run, s in stats.items()},
    )
