"""The run folder `outputs/<run_name>/`: resume or refuse before training, write the final artifacts after it.

While training, `checkpoint-*` folders live in it; a rerun after a kill resumes from the newest one. A finished run
holds only what a user needs — the adapter (`adapter_config.json`, `adapter_model.safetensors`), tokenizer files,
`trainer_state.json`, `recipe.yaml` (every parsed value after overrides, relaunchable as a recipe), `dataset.json`
(id/path, revision, splits, fingerprints), a `README.md` model card — and `run_complete.json`, written last, which
marks it finished: a finished run is only replaced with `--overwrite_output_dir true`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from enum import Enum
from pathlib import Path

import yaml
from accelerate import PartialState
from loguru import logger
from transformers import TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME

from paraphrx.errors import EXIT_FAILED, UserError

COMPLETE_MARKER = "run_complete.json"
RECIPE_FILE = "recipe.yaml"
DATASET_FILE = "dataset.json"


class RunFolderError(UserError):
    """The output folder is in a state this run must not touch; the message is one line meant for the user."""

    exit_code = EXIT_FAILED


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write to a temporary file in the same folder, then rename: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def resolve_checkpoint_or_refuse(training_args) -> str | None:
    """The checkpoint to resume from, or None for a fresh start; refuses to touch a finished run.

    An explicit `resume_from_checkpoint` wins. `overwrite_output_dir` wipes the folder (a fresh start even if
    checkpoints exist). Otherwise the newest `checkpoint-*` in `output_dir` is resumed.
    """
    out = Path(training_args.output_dir)
    state = PartialState()
    finished = (out / COMPLETE_MARKER).exists()
    if training_args.overwrite_output_dir and out.exists() and any(out.iterdir()) and not is_run_folder(out):
        raise RunFolderError(
            f"{out} is not a paraphrx run folder (no {RECIPE_FILE}, {COMPLETE_MARKER} or checkpoint-*); "
            "--overwrite_output_dir only replaces runs, so choose another --output_dir"
        )
    if training_args.overwrite_output_dir and out.exists():
        state.wait_for_everyone()  # everyone has looked at the folder before the main process wipes it
        if state.is_main_process:
            logger.warning("overwrite_output_dir: removing the previous run in {}", out)
            shutil.rmtree(out)
        state.wait_for_everyone()
        return None
    if finished:
        raise RunFolderError(
            f"{out} holds a finished run ({COMPLETE_MARKER}); pass --overwrite_output_dir true to replace it "
            "or choose another --output_dir"
        )
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    last = last_complete_checkpoint(out)
    if last:
        logger.info("resuming from {}", last)
    return last


def is_run_folder(out: Path) -> bool:
    """A folder a paraphrx run wrote: the only kind `--overwrite_output_dir` may delete."""
    return any((out / name).exists() for name in (RECIPE_FILE, COMPLETE_MARKER, TRAINER_STATE_NAME)) or any(
        out.glob("checkpoint-*")
    )


def last_complete_checkpoint(out: str | Path) -> str | None:
    """The newest `checkpoint-N` that was fully written. Trainer writes `trainer_state.json` last and not atomically,
    so a run killed while saving leaves a newer folder without it; resuming from that one would fail."""
    out = Path(out)
    if not out.is_dir():
        return None
    numbered = (p.name.removeprefix("checkpoint-") for p in out.glob("checkpoint-*"))
    for step in sorted((int(n) for n in numbered if n.isdigit()), reverse=True):
        checkpoint = out / f"checkpoint-{step}"
        if (checkpoint / TRAINER_STATE_NAME).is_file():
            return str(checkpoint)
        logger.warning("skipping {}: incomplete (no {}), probably killed while saving", checkpoint, TRAINER_STATE_NAME)
    return None


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


def finalize_run(trainer, recipe: dict, dataset_record: dict, keep_checkpoints: bool = False) -> Path:
    """Save the final adapter and run records into `output_dir`, each file atomically, the completion marker last.

    Call on every process (saving may gather sharded weights); only the main process writes files.
    """
    out = Path(trainer.args.output_dir)
    staging = out / ".final"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)  # left over by a run killed while finishing
    trainer.save_model(str(staging))  # adapter + tokenizer, written by the main process
    if not trainer.is_world_process_zero():
        return out
    trainer.state.save_to_json(str(staging / "trainer_state.json"))
    (staging / RECIPE_FILE).write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    (staging / DATASET_FILE).write_text(json.dumps(dataset_record, indent=2, default=str) + "\n", encoding="utf-8")
    trainer.create_model_card(
        model_name=trainer.args.run_name, dataset_name=dataset_record.get("dataset"), tags=["paraphrx", "qlora"]
    )
    card = (out / "README.md").read_text(encoding="utf-8") + run_card_section(recipe, dataset_record, trainer.state)
    (staging / "README.md").write_text(card, encoding="utf-8")
    for item in staging.iterdir():
        os.replace(item, out / item.name)  # one rename per file: each appears whole
    staging.rmdir()
    write_json_atomic(
        out / COMPLETE_MARKER,
        {
            "global_step": trainer.state.global_step,
            "best_metric": trainer.state.best_metric,
            "best_global_step": trainer.state.best_global_step,  # whose adapter was kept (load_best_model_at_end)
            "base_model": recipe.get("model_name_or_path"),
            "dataset": dataset_record,
        },
    )
    if not keep_checkpoints:  # after the marker: a kill in between leaves a finished run, not a lost resume point
        for checkpoint in out.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)
    logger.info("run finished: adapter and records in {}", out)
    return out


def run_card_section(recipe: dict, dataset_record: dict, state) -> str:
    """The paraphrx part of the model card: what data and recipe made this adapter, and where it ended."""
    last_eval = next((h for h in reversed(state.log_history) if "eval_loss" in h), {})
    lines = [
        "",
        "## paraphrx run",
        "",
        f"- base model: `{recipe.get('model_name_or_path')}` (4-bit: {recipe.get('load_in_4bit')}, "
        f"LoRA r={recipe.get('lora_r')} alpha={recipe.get('lora_alpha')})",
        f"- dataset: `{dataset_record.get('dataset')}` revision `{dataset_record.get('revision')}`, "
        f"train split `{dataset_record.get('train_split')}` ({dataset_record.get('train_rows')} rows), "
        f"eval split `{dataset_record.get('eval_split')}` buckets {dataset_record.get('eval_buckets')}",
        f"- optimizer steps: {state.global_step}; best eval_loss: {state.best_metric}",
    ]
    if last_eval:
        loss, ppl = last_eval.get("eval_loss"), last_eval.get("eval_perplexity")
        lines.append(f"- last eval: loss {loss:.4f}, perplexity {ppl:.4g}")
    lines += ["", f"The full resolved recipe is `{RECIPE_FILE}`; the data record is `{DATASET_FILE}`.", ""]
    return "\n".join(lines)
