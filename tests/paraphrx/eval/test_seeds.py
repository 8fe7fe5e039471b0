"""Runs of one recipe that differ only in seed are found from their recipe.yaml, and nothing else is grouped."""

from paraphrx.eval.seeds import group_name, seed_groups

RECIPE = {
    "model_name_or_path": "google/gemma-2-2b-it",
    "learning_rate": 2e-4,
    "dataset_train_split": "bucket1_4",
    "lora_target_modules": ["q_proj", "v_proj"],
    "seed": 42,
    "run_name": "bucket1-4",
    "output_dir": "outputs/bucket1-4",
    "logging_dir": "outputs/bucket1-4/runs",
    "report_to": ["none"],
}


def _seeded(seed: int, name: str | None = None, **changes) -> dict:
    name = name or f"bucket1-4-seed{seed}"
    return {**RECIPE, "seed": seed, "run_name": name, "output_dir": f"outputs/{name}", **changes}


def test_runs_differing_only_in_seed_and_run_keys_are_one_model():
    recipes = {
        "bucket1-4-seed1": _seeded(1),
        "bucket1-4-seed2": _seeded(2, report_to=["tensorboard"], data_seed=7),
        "bucket1-4-seed3": _seeded(3),
        "bucket1-4-lr": _seeded(4, "bucket1-4-lr", learning_rate=1e-4),  # another experiment
        "bucket1-5-seed1": _seeded(1, "bucket1-5-seed1", dataset_train_split="bucket1_5"),
        "bucket1-5-seed2": _seeded(2, "bucket1-5-seed2", dataset_train_split="bucket1_5"),
        "bucket1": None,  # no recipe.yaml: stands alone
    }
    assert seed_groups(recipes) == {
        "bucket1-4": {"bucket1-4-seed1": 1, "bucket1-4-seed2": 2, "bucket1-4-seed3": 3},
        "bucket1-5": {"bucket1-5-seed1": 1, "bucket1-5-seed2": 2},
    }


def test_a_changed_list_value_separates_runs_and_a_lone_run_is_no_group():
    recipes = {"a-seed1": _seeded(1), "a-seed2": _seeded(2, lora_target_modules=["q_proj"])}
    assert seed_groups(recipes) == {}
    assert seed_groups({"a-seed1": _seeded(1)}) == {}


def test_group_names():
    assert group_name(["bucket1-seed1", "bucket1-seed2"], set()) == "bucket1"
    assert group_name(["bucket1_seed_1", "bucket1_seed_2"], set()) == "bucket1"
    assert group_name(["run-a", "run-b", "run-c"], set()) == "run-a+2"  # no common stem
    # the stem is the name of a run outside the group: keep them apart
    assert group_name(["x-seed1", "x-seed2"], {"x", "x-seed1", "x-seed2"}) == "x (seeds)"
    assert group_name(["x", "x-seed2"], {"x", "x-seed2"}) == "x"  # the stem is a member's own name
