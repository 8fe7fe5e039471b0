"""The run folder `outputs/<run_name>/`: resume or refuse before training, write the final artifacts after it.

One run per folder (paraphrx/run_lock.py). While training, `checkpoint-*` folders live in it; a rerun after a kill
resumes from the newest verified one (paraphrx/checkpoints.py). A finished run holds only what a user needs — the
adapter (`adapter_config.json`, `adapter_model.safetensors`), tokenizer files, `trainer_state.json`, `recipe.yaml`
(every parsed value after overrides, relaunchable as a recipe), `dataset.json` (id/path, revision, splits,
fingerprints), a `README.md` model card — and `run_complete.json`, written last, which marks it finished: a finished
run is only replaced with `--overwrite_output_dir true`, by a new run that trains beside it and is swapped in whole
once complete (a replacing run killed midway starts over when relaunched; the previous run is untouched).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

import yaml
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from loguru import logger
from transformers import TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME

from paraphrx.atomic_folder import (
    clean_leftovers,
    leftover_prefix,
    owned_folder,
    swap_in,
    write_json_atomic,
    write_text_atomic,
)
from paraphrx.callbacks import full_validation_result
from paraphrx.checkpoints import CHECKPOINT_MARKER, checkpoint_problem, newest_verified_checkpoint
from paraphrx.errors import EXIT_FAILED, UserError
from paraphrx.hub import create_repo, hub_failures, upload_folder
from paraphrx.model_card import launch_command, render_model_card
from paraphrx.patches import patch_attribute
from paraphrx.run_lock import FolderInUseError, FolderLock

COMPLETE_MARKER = "run_complete.json"
RECIPE_FILE = "recipe.yaml"
DATASET_FILE = "dataset.json"


class RunFolderError(UserError):
    """The output folder is in a state this run must not touch; the message is one line meant for the user."""

    exit_code = EXIT_FAILED


@dataclasses.dataclass
class RunFolder:
    """Where a run writes: `output_dir` is the run folder users see; `train_dir` is where Trainer writes (the same
    folder, or a hidden sibling while a finished run in `output_dir` waits to be replaced); `checkpoint` is the
    verified checkpoint to resume from (None: a fresh start)."""

    output_dir: Path
    train_dir: Path
    checkpoint: str | None = None


@contextmanager
def claim_run_folder(training_args) -> Iterator[RunFolder]:
    """Hold `output_dir` for this run, decide where it trains and what it resumes from, and point
    `training_args.output_dir` there. Refuses a folder another live run holds, a finished run (unless
    `--overwrite_output_dir`) and a folder paraphrx did not write.

    Only the main process locks and looks at the folder; the others receive its decision, so that in a multi-process
    launch no rank waits for a lock it does not need."""
    state = PartialState()
    out = Path(training_args.output_dir)
    lock, staging_fd, decision, failure = None, None, [None], None
    fresh = state.is_main_process and not out.exists()  # a run that ends with nothing in it leaves no empty folder
    if state.is_main_process:
        try:
            lock = FolderLock(out)
            decision[0], staging_fd = _plan(training_args, out)
        except (FolderInUseError, RunFolderError) as err:
            decision[0] = str(err)
        except Exception as err:  # noqa: BLE001 - told to the other ranks, then raised here
            decision[0], failure = f"{out}: {type(err).__name__}: {err}", err
    broadcast_object_list(decision)
    run = decision[0]
    try:
        if failure is not None:
            raise failure
        if isinstance(run, str):
            raise RunFolderError(run)
        training_args.output_dir = str(run.train_dir)
        yield run
    except BaseException:
        if staging_fd is not None:  # a replacing run that failed: its staging folder goes, the old run stays
            shutil.rmtree(run.train_dir, ignore_errors=True)
        if fresh and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    finally:
        if isinstance(run, RunFolder):
            training_args.output_dir = str(run.output_dir)
        if staging_fd is not None:
            os.close(staging_fd)
        if lock is not None:
            lock.release()


def _plan(training_args, out: Path) -> tuple[RunFolder, int | None]:
    """The main process's decision for `claim_run_folder` (and the fd that owns a staging folder, if any)."""
    clean_leftovers(out)  # staging folders of killed replacing runs, a folder swap killed midway
    if training_args.overwrite_output_dir and out.is_dir() and any(out.iterdir()):
        if not is_run_folder(out):
            raise RunFolderError(
                f"{out} is not a paraphrx run folder (no {RECIPE_FILE}, {COMPLETE_MARKER} or checkpoint-*); "
                "--overwrite_output_dir only replaces runs, so choose another --output_dir"
            )
        staging, fd = owned_folder(out.parent, leftover_prefix(out, "tmp"))
        logger.warning(
            "overwrite_output_dir: a new run trains in {}; the previous one stays in {} until it completes",
            staging,
            out,
        )
        return RunFolder(out, staging), fd
    if (out / COMPLETE_MARKER).exists():
        raise RunFolderError(
            f"{out} holds a finished run ({COMPLETE_MARKER}); pass --overwrite_output_dir true to replace it "
            "or choose another --output_dir"
        )
    if training_args.resume_from_checkpoint:
        return RunFolder(out, out, checked_checkpoint(Path(training_args.resume_from_checkpoint))), None
    checkpoint, skipped = newest_verified_checkpoint(out)
    for path, problem in skipped:  # newer than the resume point: the resumed run saves those steps again
        logger.warning("skipping {}: {}; removed", path, problem)
        shutil.rmtree(path)
    if checkpoint is not None:
        logger.info("resuming from {}", checkpoint)
    return RunFolder(out, out, None if checkpoint is None else str(checkpoint)), None


def checked_checkpoint(path: Path) -> str:
    """An explicit `--resume_from_checkpoint`: refused when its files no longer match their marker."""
    if not path.is_dir():
        raise RunFolderError(f"--resume_from_checkpoint {path}: not a folder")
    problem = checkpoint_problem(path)
    if problem is not None and (path / CHECKPOINT_MARKER).exists():
        raise RunFolderError(f"--resume_from_checkpoint {path}: {problem}")
    if problem is not None:
        logger.warning("resuming from {} unverified: {}", path, problem)
    return str(path)


def is_run_folder(out: Path) -> bool:
    """A folder a paraphrx run wrote: the only kind `--overwrite_output_dir` may replace."""
    return any((out / name).exists() for name in (RECIPE_FILE, COMPLETE_MARKER, TRAINER_STATE_NAME)) or any(
        out.glob("checkpoint-*")
    )


ADAPTER_CONFIG = "adapter_config.json"
_SET_FIELDS = ("target_modules", "exclude_modules")  # sets in peft's LoraConfig, written as lists in hash order


def sort_adapter_config(folder: str | Path) -> None:
    """peft writes `target_modules` in the order of a Python set, which differs between processes, so an identical
    adapter trained again got another adapter_config.json, and with it another evaluation cache key. Sorted here,
    written as peft writes it (indented, sorted keys)."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in _SET_FIELDS:
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key], key=str)
    write_text_atomic(path, json.dumps(config, indent=2, sort_keys=True))


def _plain(value):
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))
    if hasattr(value, "to_dict"):
        return _plain(value.to_dict())
    return value


def resolved_recipe(*configs) -> dict:
    """Every parsed value (after overrides) as one flat mapping, in recipe form: `train_sft.py recipe.yaml` reruns it.

    `TrainingArguments.to_dict()` masks every `*_token` field, which would also turn `eos_token`/`pad_token` into
    placeholders; here only the Hub token is withheld (secrets never reach a file).
    """
    recipe: dict = {}
    for config in configs:
        if isinstance(config, TrainingArguments):
            values = config.to_dict()
            values.update({k: getattr(config, k) for k in values if k.endswith("_token")})
            values["hub_token"] = None
        else:
            values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
        recipe.update({k: _plain(v) for k, v in values.items()})
    return recipe


def finalize_run(
    trainer,
    recipe: dict,
    dataset_record: dict,
    keep_checkpoints: bool = False,
    output_dir: str | Path | None = None,
    hub_repo: str | None = None,
) -> Path:
    """Save the final adapter and run records into the run folder, each file atomically, the completion marker last.

    `output_dir` is the run folder users see when Trainer trained elsewhere (`RunFolder.train_dir`, a replacing run's
    staging folder): the finished folder is swapped in there, and only then marked finished. `hub_repo`: where the
    model card says to load the adapter from (the run folder when it is not pushed).
    Call on every process (saving may gather sharded weights); only the main process writes files.
    """
    out = Path(trainer.args.output_dir)
    dest = out if output_dir is None else Path(output_dir)
    staging = out / ".final"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)  # left over by a run killed while finishing
    trainer.save_model(str(staging))  # adapter + tokenizer, written by the main process
    if not trainer.is_world_process_zero():
        return dest
    best = trainer.state.best_model_checkpoint
    if best and dest != out and Path(best).parent == out:  # where it will be once swapped in
        trainer.state.best_model_checkpoint = str(dest / Path(best).name)
    trainer.state.save_to_json(str(staging / "trainer_state.json"))
    (staging / RECIPE_FILE).write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    (staging / DATASET_FILE).write_text(json.dumps(dataset_record, indent=2, default=str) + "\n", encoding="utf-8")
    card = render_model_card(
        recipe, dataset_record, trainer.state, location=hub_repo or str(dest), command=launch_command()
    )
    (staging / "README.md").write_text(card, encoding="utf-8")
    for item in staging.iterdir():
        os.replace(item, out / item.name)  # one rename per file: each appears whole
    staging.rmdir()
    if dest != out:  # a replacing run: the previous run in `dest` is deleted only now, once this one is complete
        swap_in(out, dest)
        trainer.args.output_dir = str(dest)
        out = dest
    write_json_atomic(
        out / COMPLETE_MARKER,
        {
            "global_step": trainer.state.global_step,
            "best_metric": trainer.state.best_metric,
            "best_global_step": trainer.state.best_global_step,  # whose adapter was kept (load_best_model_at_end)
            "full_validation": full_validation_result(trainer.state, trainer.args.load_best_model_at_end),
            "base_model": recipe.get("model_name_or_path"),
            "dataset": dataset_record,
        },
    )
    if not keep_checkpoints:  # after the marker: a kill in between leaves a finished run, not a lost resume point
        for checkpoint in out.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)
    logger.info("run finished: adapter and records in {}", out)
    return out


def resume_hint(output_dir: str | Path) -> str:
    """What Ctrl-C leaves and how to go on, for the one line it ends with."""
    steps = sorted(
        int(p.name.removeprefix("checkpoint-"))
        for p in Path(output_dir).glob("checkpoint-*")
        if p.name.removeprefix("checkpoint-").isdigit()
    )
    if not steps:
        return "no checkpoint was saved yet; rerun the same command to start again"
    return f"rerun the same command to resume from the newest verified checkpoint ({output_dir}/checkpoint-{steps[-1]})"


# --- push_to_hub ----------------------------------------------------------------------------------------------------
@contextmanager
def hub_push(training_args) -> Iterator[str | None]:
    """TRL's `push_to_hub: true` (and `hub_model_id`, default the run folder's name; `hub_private_repo`): the repo is
    created now, before anything loads, so an unreachable Hub or a missing token stops the run at once, in one line.
    The Trainer's own pushes stay off for the run (it would push every checkpoint); the finished run folder is
    uploaded once by `push_run`. Yields the repo's full id on the main process (None elsewhere or without a push)."""
    if not training_args.push_to_hub:
        yield None
        return
    repo = None
    if PartialState().is_main_process:
        name = training_args.hub_model_id or Path(training_args.output_dir).name
        with hub_failures(f"push_to_hub (hub_model_id {name})"):
            repo = create_repo(name, "model", bool(training_args.hub_private_repo), "hub_private_repo")
        logger.info("push_to_hub: the finished run will be uploaded to {}", repo)
    with patch_attribute(training_args, "push_to_hub", False):
        yield repo


def push_run(folder: str | Path, repo_id: str) -> str:
    """Upload a finished run folder (adapter, tokenizer, card, records; no checkpoints) to its model repo."""
    after = f"; the run is complete in {folder} (upload it later: hf upload {repo_id} {folder})"
    with hub_failures(f"push_to_hub (hub_model_id {repo_id})", after):
        url = upload_folder(
            folder, repo_id, "model", f"paraphrx: {Path(folder).name}", ignore_patterns=["checkpoint-*", ".*"]
        )
    logger.info("pushed to {}", url)
    return url
