"""Runs of one recipe that differ only in `seed`, found by comparing the adapters' resolved `recipe.yaml`.

Such runs (e.g. `make train-all SEEDS="1 2 3"` -> outputs/bucket1-4-seed1, -seed2, -seed3) are one model in the
report: the average over seeds, with the sd across seeds next to the bootstrap interval. Keys that name, place or
log a run change nothing in what it learns and are ignored in the comparison; an adapter without a recipe.yaml
stands alone.
"""

from __future__ import annotations

import re

SEED_KEYS = ("seed", "data_seed")
# Keys that differ between runs of one experiment without changing what is trained.
RUN_KEYS = SEED_KEYS + (
    "run_name",
    "output_dir",
    "logging_dir",
    "log_dir",
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "keep_checkpoints",
    "report_to",
    "push_to_hub",
    "hub_model_id",
    "hub_strategy",
    "hub_private_repo",
    "hub_token",
)
_SEED_SUFFIX = re.compile(r"[-_]seed[-_]?\d+$")


def _experiment(recipe: dict) -> str:
    return repr(sorted((k, repr(v)) for k, v in recipe.items() if k not in RUN_KEYS))


def group_name(runs: list[str], taken: set[str]) -> str:
    """The runs' common name without its `-seedN` suffix (bucket1-4-seed1, -seed2 -> bucket1-4)."""
    stems = {_SEED_SUFFIX.sub("", run) for run in runs}
    name = stems.pop() if len(stems) == 1 else f"{runs[0]}+{len(runs) - 1}"
    return name if name not in taken - set(runs) else f"{name} (seeds)"


def seed_groups(recipes: dict[str, dict | None]) -> dict[str, dict[str, int | None]]:
    """{model name: {run: seed}} for every two or more runs (by name, with their recipe.yaml or None) whose recipes
    agree on everything but the run keys; runs that match no other run are left out."""
    by_experiment: dict[str, list[str]] = {}
    for run, recipe in recipes.items():
        if recipe is not None:
            by_experiment.setdefault(_experiment(recipe), []).append(run)
    groups = {}
    for runs in by_experiment.values():
        if len(runs) > 1:
            groups[group_name(runs, set(recipes))] = {run: recipes[run].get("seed") for run in runs}
    return groups
