"""End to end on the CPU: a tiny QLoRA run through train_sft.main, its run folder, reload, refusal, early stopping,
and a real kill-and-rerun resume in subprocesses."""

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

import train_sft
from paraphrx.checkpoints import CHECKPOINT_MARKER
from paraphrx.modeling import load_model_and_tokenizer
from paraphrx.recipe_cli import parse_recipe
from paraphrx.run_outputs import COMPLETE_MARKER, RunFolderError, resolved_recipe
from tests.conftest import NO_EVALUATION, REPO, run_killed, run_python, start_python, tiny_recipe

TINY = tiny_recipe("bucket1-2")


def tiny_argv(model_dir, data_dir, out, *overrides):
    return [
        TINY,
        "--model_name_or_path",
        str(model_dir),
        "--dataset_name",
        str(data_dir),
        "--output_dir",
        str(out),
        "--log_dir",
        str(Path(out).parent / "logs"),
        *overrides,
    ]


def library_state() -> dict:
    """What a run may change in the process: Python logging (the root logger, the libraries' own loggers),
    transformers' packed-sequence check and dynamo's recompile limit (the fast path's)."""
    import logging

    import torch._dynamo
    from transformers import masking_utils

    from paraphrx.logs import LIBRARY_LOGGERS

    root = logging.getLogger()
    return {
        "root": (list(root.handlers), root.level),
        "libraries": {
            name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate)
            for name in LIBRARY_LOGGERS
        },
        "find_packed_sequence_indices": masking_utils.find_packed_sequence_indices,
        "recompile_limit": torch._dynamo.config.recompile_limit,
    }


# What each Trainer.evaluate call of tiny_run scored: (metric_key_prefix, input_ids of every batch, the LoRA weights)
EVALUATIONS: list[tuple[str, list[torch.Tensor], dict[str, torch.Tensor]]] = []


@contextlib.contextmanager
def recording_evaluations(evaluations: list):
    """Append (metric_key_prefix, the input_ids of every batch, the LoRA weights) for each Trainer.evaluate call."""
    from transformers import Trainer
    from trl import SFTTrainer

    evaluate, prediction_step = Trainer.evaluate, SFTTrainer.prediction_step

    def recording_evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        lora = {n: p.detach().clone() for n, p in self.model.named_parameters() if "lora_" in n}
        evaluations.append((metric_key_prefix, [], lora))
        return evaluate(self, eval_dataset, ignore_keys, metric_key_prefix)

    def recording_prediction_step(self, model, inputs, *args, **kwargs):
        evaluations[-1][1].append(inputs["input_ids"].clone())
        return prediction_step(self, model, inputs, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "evaluate", recording_evaluate)
        patch.setattr(SFTTrainer, "prediction_step", recording_prediction_step)
        yield evaluations


@pytest.fixture(scope="module")
def library_states() -> dict:
    """`library_state()` just before and just after train_sft.main in `tiny_run` (which fills it)."""
    return {}


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, prepared_dataset_dir, tmp_path_factory, library_states):
    """16 training rows, 4 per step, 12 steps: three passes over the same rows, so the loss must fall."""
    out = tmp_path_factory.mktemp("train") / "tiny-run"
    argv = tiny_argv(
        tiny_model_dir,
        prepared_dataset_dir,
        out,
        "--max_train_samples",
        "16",
        "--max_steps",
        "12",
        "--eval_steps",
        "4",
        "--save_steps",
        "4",
        "--logging_steps",
        "1",
    )
    library_states["before"] = library_state()
    with recording_evaluations(EVALUATIONS):
        trainer = train_sft.main(*parse_recipe(argv))
    library_states["after"] = library_state()
    return trainer, out, argv


def test_main_leaves_the_libraries_as_it_found_them(tiny_run, library_states):
    """Logging is routed into loguru while the run lasts (tests/paraphrx/test_logs.py shows it changes), and the
    fast path's process-wide patches too on a GPU (tests/paraphrx/test_fast_path.py applies them here): all undone."""
    assert library_states["after"] == library_states["before"]


def test_training_loss_falls(tiny_run):
    trainer, _, _ = tiny_run
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 12
    first_pass, last_pass = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last_pass < first_pass - 0.05, losses


def test_base_is_4bit_nf4_and_only_lora_trains(tiny_run):
    trainer, _, _ = tiny_run
    import bitsandbytes as bnb

    linear4 = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 2 * 7  # 2 layers x q,k,v,o,gate,up,down
    assert all(m.weight.quant_type == "nf4" for m in linear4)
    trainable = {n: p.dtype for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # TRL trains LoRA in bf16 over a 4-bit base; the best adapter loaded at the end (through PEFT's load_adapter,
    # which upcasts) is in bf16 again for the end-of-run evaluation
    assert trainer.state.best_model_checkpoint and set(trainable.values()) == {torch.bfloat16}


def test_run_folder_holds_the_adapter_and_records(tiny_run, tiny_model_dir, prepared_dataset_dir):
    trainer, out, _ = tiny_run
    names = {p.name for p in out.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "trainer_state.json",
        "recipe.yaml",
        "dataset.json",
        "README.md",
        COMPLETE_MARKER,
    } <= names
    assert "model.safetensors" not in names and not any(n.startswith("checkpoint-") for n in names)
    assert not any(n.startswith(".") for n in names), "no temporary files left behind"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir)
    assert (adapter["r"], adapter["lora_alpha"]) == (16, 32)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 12
    record = json.loads((out / "dataset.json").read_text())
    assert record["dataset"] == str(prepared_dataset_dir) and record["train_split"] == "bucket1_2"
    assert record["eval_split"] == "validation" and record["eval_buckets"] == [1, 2] and record["card_sha256"]
    assert adapter["target_modules"] == sorted(adapter["target_modules"]), "a stable order (cache keys follow it)"


def test_model_card_says_what_made_the_adapter_and_how_to_use_it(tiny_run, tiny_model_dir, prepared_dataset_dir):
    """TRL's default card said "fine-tuned version of [None](https://huggingface.co/None)" and linked the local
    dataset folder as a Hub dataset."""
    trainer, out, _ = tiny_run
    card = (out / "README.md").read_text()
    assert "None" not in card and "huggingface.co/datasets/" not in card
    assert f"| base model | `{tiny_model_dir}` (a local folder), loaded in 4-bit nf4" in card
    assert f"| dataset | `{prepared_dataset_dir}` (a local folder)" in card
    assert "| train split | `bucket1_2`: 16 rows |" in card and "| steps | 12 optimizer steps, 3 epochs |" in card
    assert f"| best eval_loss | {trainer.state.best_metric:.4f} at step {trainer.state.best_global_step}" in card
    assert "| LoRA | r=16, alpha=32, dropout 0.05, on down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj" in card
    assert (
        f'AutoPeftModelForCausalLM.from_pretrained("{out}"' in card and f"--lora-modules tiny-bucket1-2={out}" in card
    )


def test_each_step_is_logged_once_with_the_epochs_it_covers(tiny_run):
    from transformers import PrinterCallback, ProgressCallback

    trainer, out, _ = tiny_run
    kinds = [type(c) for c in trainer.callback_handler.callbacks]
    assert PrinterCallback not in kinds and ProgressCallback not in kinds  # the bar stays, without its own print
    text = (out.parent / "logs" / "tiny-bucket1-2_latest.log").read_text()
    assert "training: 12 optimizer steps, 3 epochs" in text  # 16 rows, 4 a step; not num_train_epochs


def test_adapter_folder_holds_only_what_a_lora_loader_accepts(tiny_run, tiny_model_dir):
    """What PEFT's and vLLM's LoRA loaders (`vllm serve --enable-lora --lora-modules name=path`) take: the config
    naming the base, plain LoRA (no DoRA, bias, modules_to_save), and A/B of the 7 projections of every layer:
    no embedding or LM-head weights. The evaluation's engine reads the same folder (it refuses anything else)."""
    from peft import LoraConfig
    from safetensors import safe_open

    from paraphrx.eval.engine import projection_modules
    from paraphrx.eval.lora_batch import read_lora_adapter

    _, out, _ = tiny_run
    config = LoraConfig.from_pretrained(str(out))
    assert config.peft_type == "LORA" and config.base_model_name_or_path == str(tiny_model_dir)
    assert (config.r, config.use_dora, config.bias, config.modules_to_save) == (16, False, "none", None)
    with safe_open(out / "adapter_model.safetensors", "pt") as weights:
        shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
    projections = {
        "q_proj": (64, 64),
        "k_proj": (64, 32),
        "v_proj": (64, 32),
        "o_proj": (64, 64),
        "gate_proj": (64, 128),
        "up_proj": (64, 128),
        "down_proj": (128, 64),
    }  # (in, out), tiny Gemma-2
    expected = {}
    for layer in range(2):
        for name, (fan_in, fan_out) in projections.items():
            group = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            key = f"base_model.model.model.layers.{layer}.{group}.{name}"
            expected |= {f"{key}.lora_A.weight": (16, fan_in), f"{key}.lora_B.weight": (fan_out, 16)}
    assert shapes == expected  # nothing else: no embed_tokens, no lm_head, no bias or magnitude vectors
    weight_files = [p.name for p in out.iterdir() if p.suffix in (".safetensors", ".bin", ".pt")]
    assert sorted(weight_files) == ["adapter_model.safetensors", "training_args.bin"]  # the latter: Trainer's args
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert read_lora_adapter("run", out, projection_modules(model)).rank == 16


def test_resolved_recipe_reruns_as_a_recipe(tiny_run):
    _, out, argv = tiny_run
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["max_steps"] == 12 and recipe["max_train_samples"] == 16 and recipe["lora_r"] == 16
    assert recipe["hub_token"] is None
    again = parse_recipe([str(out / "recipe.yaml")])
    original = parse_recipe(argv)
    assert resolved_recipe(*again) == resolved_recipe(*original)


def test_logs_carry_loss_eval_perplexity_lr_and_memory(tiny_run):
    trainer, out, _ = tiny_run
    history = trainer.state.log_history
    evals = [h for h in history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [4, 8, 12]
    assert all(math.isclose(h["eval_perplexity"], math.exp(h["eval_loss"]), rel_tol=1e-9) for h in evals)
    train_logs = [h for h in history if "loss" in h]
    assert all("learning_rate" in h and h["cpu_max_rss_gib"] > 0 for h in train_logs)
    log_dir = out.parent / "logs"
    latest = log_dir / "tiny-bucket1-2_latest.log"
    assert latest.is_symlink()
    text = latest.read_text()
    assert "trainable parameters: " in text and "eval_perplexity=" in text and "learning_rate=" in text
    first = text.splitlines()[0]
    assert first[:4].isdigit() and first[23] == "Z" and "| INFO" in first  # UTC timestamp, level


def test_every_evaluation_scores_the_same_subset_and_the_end_the_whole_split(tiny_run):
    trainer, out, _ = tiny_run
    scheduled = [batches for prefix, batches, _ in EVALUATIONS if prefix == "eval"]
    (final,) = [batches for prefix, batches, _ in EVALUATIONS if prefix == "eval_full"]
    assert [prefix for prefix, *_ in EVALUATIONS] == ["eval", "eval", "eval", "eval_full"]
    for batches in scheduled[1:]:
        assert len(batches) == len(scheduled[0]) and all(torch.equal(a, b) for a, b in zip(batches, scheduled[0]))
    record = json.loads((out / "dataset.json").read_text())
    subset_rows, full_rows = sum(len(b) for b in scheduled[0]), sum(len(b) for b in final)
    # TRL drops a row whose prompt alone fills max_length (128 in the tiny recipes): at most a few
    assert subset_rows == len(trainer.eval_dataset) and record["eval_rows"] - 2 <= subset_rows <= record["eval_rows"]
    assert record["eval_rows"] == 16 and record["full_eval_rows"] - 10 <= full_rows <= record["full_eval_rows"]
    assert record["full_eval_rows"] == 161 and record["eval_subset"]["of_rows"] == 161  # buckets 1-2 of validation
    assert len(record["eval_subset"]["selected"]) == 16 and len(record["eval_subset"]["strata"]) == 4


def test_the_kept_adapter_is_scored_on_the_whole_validation_split_at_the_end(tiny_run):
    trainer, out, _ = tiny_run
    history = trainer.state.log_history
    (full,) = [h for h in history if "eval_full_loss" in h]
    assert history.index(full) > max(i for i, h in enumerate(history) if "eval_loss" in h or "loss" in h)
    assert math.isclose(full["eval_full_perplexity"], math.exp(full["eval_full_loss"]), rel_tol=1e-9)
    complete = json.loads((out / COMPLETE_MARKER).read_text())
    assert complete["full_validation"] == {
        "loss": full["eval_full_loss"],
        "perplexity": full["eval_full_perplexity"],
        "adapter_step": complete["best_global_step"],
    }
    assert f"loss {full['eval_full_loss']:.4f}" in (out / "README.md").read_text()
    text = (out.parent / "logs" / "tiny-bucket1-2_latest.log").read_text()
    assert "eval_full_loss=" in text and "loss on the whole validation split (161 rows)" in text
    # the adapter scored is the one the best step's evaluation saw (test_early_stopping_stops: not the last one)
    weights = [lora for *_, lora in EVALUATIONS]
    best = [h["step"] for h in history if "eval_loss" in h].index(complete["best_global_step"])
    assert weights[-1].keys() == weights[best].keys() and len(weights[-1]) == 2 * 7 * 2
    assert all(torch.equal(weights[-1][n], weights[best][n]) for n in weights[best])


def test_saved_adapter_reloads_with_the_same_logits(tiny_run):
    from peft import PeftModel

    trainer, out, argv = tiny_run
    _, training_args, model_args = parse_recipe(argv)
    base, tokenizer = load_model_and_tokenizer(model_args, training_args)
    # keep the saved bf16 adapter weights as they are (PEFT would upcast them to fp32)
    reloaded = PeftModel.from_pretrained(base, str(out), autocast_adapter_dtype=False).eval()
    trained = trainer.model.eval()
    saved = {n: p for n, p in reloaded.named_parameters() if "lora_" in n}
    in_memory = {n: p for n, p in trained.named_parameters() if "lora_" in n}
    assert saved.keys() == in_memory.keys() and len(saved) == 2 * 7 * 2
    assert all(torch.equal(saved[n].float(), in_memory[n].float()) for n in saved), "adapter weights bit for bit"

    batch = tokenizer(
        ["### Instruction:\nName a colour.\n\n### Response:\nBlue", "Hello"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        expected = trained(**batch).logits.float()
        actual = reloaded(**batch).logits.float()
        with reloaded.disable_adapter():
            plain = reloaded(**batch).logits.float()
    # bitsandbytes on the CPU un-nests each NF4 layer's absmax to bf16 at its first forward, so two loads of the same
    # 4-bit base agree to bf16 rounding of logits (~1e-2), not bit for bit; the adapter moves them far more.
    assert torch.allclose(actual, expected, atol=2e-2), (actual - expected).abs().max()
    assert (plain - expected).abs().max() > 10 * (actual - expected).abs().max(), "the adapter must change the logits"


def test_finished_run_is_not_overwritten(tiny_run):
    _, out, argv = tiny_run
    before = (out / "adapter_model.safetensors").read_bytes()
    with pytest.raises(RunFolderError, match="finished run"):
        train_sft.main(*parse_recipe(argv))
    assert (out / "adapter_model.safetensors").read_bytes() == before


def test_early_stopping_stops(tiny_run, tiny_model_dir, prepared_dataset_dir, tmp_path):
    # A threshold no eval can beat: the first eval sets the best, the next one exhausts patience 1.
    argv = tiny_argv(
        tiny_model_dir,
        prepared_dataset_dir,
        tmp_path / "es",
        "--max_steps",
        "20",
        "--eval_steps",
        "1",
        "--save_steps",
        "1",
        "--early_stopping_patience",
        "1",
        "--early_stopping_threshold",
        "100",
    )
    with recording_evaluations([]) as evaluations:
        trainer = train_sft.main(*parse_recipe(argv))
    assert trainer.state.global_step == 2
    assert (tmp_path / "es" / COMPLETE_MARKER).exists()
    text = (tmp_path / "logs" / "tiny-bucket1-2_latest.log").read_text()
    assert text.count("early stopping at step") == 1 and "early stopping at step 2" in text  # not again at the end
    # the whole split is scored with the kept adapter, step 1's, not the last step's
    assert [prefix for prefix, *_ in evaluations] == ["eval", "eval", "eval_full"]
    (step_1, step_2, scored) = [lora for *_, lora in evaluations]
    assert all(torch.equal(scored[n], step_1[n]) for n in step_1)
    assert not all(torch.equal(scored[n], step_2[n]) for n in step_2)
    complete = json.loads((tmp_path / "es" / COMPLETE_MARKER).read_text())
    assert complete["best_global_step"] == 1 and complete["full_validation"]["adapter_step"] == 1
    # another run of the same recipe evaluates on the very same rows
    _, first_run, _ = tiny_run
    subset, first_subset = (json.loads((run / "dataset.json").read_text()) for run in (tmp_path / "es", first_run))
    assert subset["eval_subset"] == first_subset["eval_subset"] and subset["eval_fingerprint"]
    assert subset["eval_fingerprint"] == first_subset["eval_fingerprint"]


def test_kill_and_rerun_resumes(tiny_model_dir, prepared_dataset_dir, tmp_path):
    out = tmp_path / "killed"
    argv = tiny_argv(
        tiny_model_dir,
        prepared_dataset_dir,
        out,
        "--max_steps",
        "10",
        "--save_steps",
        "3",
        *NO_EVALUATION,
    )
    cmd = [sys.executable, str(REPO / "train_sft.py"), *argv]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the marker, not trainer_state.json: a checkpoint killed before its marker is rightly not resumed from
    checkpoint_done = out / "checkpoint-3" / CHECKPOINT_MARKER
    deadline = time.monotonic() + 240
    while not checkpoint_done.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the run must be killed mid-training"
    assert not (out / COMPLETE_MARKER).exists()

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    log = second.stderr
    assert "resuming from " in log and "checkpoint-" in log
    step = int(log.split("resuming from ")[1].split("checkpoint-")[1].split()[0])
    assert step >= 3 and step % 3 == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 10
    logged_steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert logged_steps and logged_steps[-1] == 10
    assert f"step {step + 1}/10" in log and f"step {step}/10 | loss" not in log, "continued after the checkpoint"


def test_missing_model_folder_is_one_line_exit_1(prepared_dataset_dir, tmp_path):
    """E.g. the tiny recipe before `make tiny-model`: one error line, no traceback."""
    missing = tmp_path / "no-such-model"
    cmd = [
        sys.executable,
        str(REPO / "train_sft.py"),
        *tiny_argv(missing, prepared_dataset_dir, tmp_path / "out", "--max_steps", "1"),
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "| ERROR" in line]
    assert len(errors) == 1 and errors[0].endswith(f"model_name_or_path {missing}: no such folder"), proc.stderr[-2000:]


@pytest.mark.parametrize("key", ["model_name_or_path", "dataset_name"])
def test_a_mistyped_local_folder_is_named_at_once_without_asking_the_hub(
    tiny_model_dir, prepared_dataset_dir, tmp_path, monkeypatch, key
):
    """`models/tiny-gemma3` beside `models/`: 30-55 s of Hub retries, then "couldn't connect to huggingface.co"."""
    from paraphrx.modeling import ModelLoadError
    from paraphrx.training_data import TrainingDataError

    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    argv = tiny_argv(tiny_model_dir, prepared_dataset_dir, tmp_path / "out")
    argv[argv.index(f"--{key}") + 1] = "models/tiny-gemma3"
    expected = {
        "model_name_or_path": (ModelLoadError, "model_name_or_path models/tiny-gemma3: no such folder"),
        "dataset_name": (
            TrainingDataError,
            "dataset_name models/tiny-gemma3: no such folder; build it with `make prep`",
        ),
    }[key]
    start = time.monotonic()
    with pytest.raises(expected[0]) as err:
        train_sft.main(*parse_recipe(argv))
    assert str(err.value) == expected[1] and time.monotonic() - start < 10
    assert not (tmp_path / "out").exists()


def test_ctrl_c_is_one_line_that_says_the_rerun_resumes(tiny_model_dir, prepared_dataset_dir, tmp_path):
    out = tmp_path / "stopped"
    argv = tiny_argv(
        tiny_model_dir,
        prepared_dataset_dir,
        out,
        "--max_steps",
        "10",
        "--save_steps",
        "2",
        *NO_EVALUATION,
    )
    proc = run_python(
        [REPO / "train_sft.py", *argv],
        tmp_path,
        """
        import os, signal
        from paraphrx import checkpoints
        mark = checkpoints.write_checkpoint_marker
        def mark_then_ctrl_c(folder, global_step):
            mark(folder, global_step)
            if global_step == 4:
                os.kill(os.getpid(), signal.SIGINT)
        checkpoints.write_checkpoint_marker = mark_then_ctrl_c
    """,
    )
    assert proc.returncode == 130 and "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if "| ERROR" in line]
    assert line.endswith(
        f"| interrupted: rerun the same command to resume from the newest verified checkpoint ({out}/checkpoint-4)"
    )


def test_push_to_hub_without_a_reachable_hub_stops_before_anything_is_written(
    tiny_model_dir, prepared_dataset_dir, tmp_path
):
    """HF_HUB_OFFLINE=1 (start_python sets it) stands for a Hub that cannot be reached: one line, exit 1, at once."""
    out = tmp_path / "pushed"
    argv = tiny_argv(tiny_model_dir, prepared_dataset_dir, out, "--push_to_hub", "true", "--hub_model_id", "me/tiny")
    proc = run_python([REPO / "train_sft.py", *argv], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if "| ERROR" in line]
    assert "| push_to_hub (hub_model_id me/tiny): OfflineModeIsEnabled: " in line
    assert not out.exists() and "loaded " not in proc.stderr  # before the model loads


def test_push_to_hub_uploads_the_finished_run_with_its_card(
    tiny_model_dir, prepared_dataset_dir, tmp_path, monkeypatch
):
    import huggingface_hub

    from tests.conftest import FakeHfApi

    FakeHfApi.calls, FakeHfApi.existing = [], {}
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    out = tmp_path / "pushed"
    argv = tiny_argv(
        tiny_model_dir,
        prepared_dataset_dir,
        out,
        "--max_train_samples",
        "8",
        "--max_steps",
        "2",
        *NO_EVALUATION,
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "me/tiny",
    )
    train_sft.main(*parse_recipe(argv))
    calls = [name for name, _ in FakeHfApi.calls]
    assert calls == ["init", "repo_info", "create_repo", "init", "upload_folder"]  # the repo first, one upload last
    upload = dict(FakeHfApi.calls)["upload_folder"]
    assert upload["folder_path"] == str(out) and upload["repo_id"] == "me/tiny" and upload["repo_type"] == "model"
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "recipe.yaml"} <= set(upload["files"])
    card = (out / "README.md").read_text()
    assert (
        'AutoPeftModelForCausalLM.from_pretrained("me/tiny"' in card and "--lora-modules tiny-bucket1-2=me/tiny" in card
    )


# --- nothing lost, nothing stuck: kills at named instants, a busy folder, a replaced run, a crash -------------------
def adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(tiny_model_dir, prepared_dataset_dir, tmp_path):
    """Killed right after checkpoint-4 is verified, early stopping's counter at 1, then rerun: the same last step,
    the same reported figures, LoRA tensors of the same dtype and values (to CPU bitsandbytes noise: its first
    eval-mode forward repacks the 4-bit weights, which the resumed process has not done yet)."""
    # A threshold no eval can beat: the first eval (step 2) sets the best, patience 2 runs out at step 6.
    settings = [
        "--max_train_samples",
        "16",
        "--max_steps",
        "30",
        "--eval_steps",
        "2",
        "--save_steps",
        "2",
        "--early_stopping_patience",
        "2",
        "--early_stopping_threshold",
        "100",
        "--keep_checkpoints",
        "true",
        "--save_total_limit",
        "10",
    ]
    whole = train_sft.main(
        *parse_recipe(tiny_argv(tiny_model_dir, prepared_dataset_dir, tmp_path / "whole", *settings))
    )
    argv = tiny_argv(tiny_model_dir, prepared_dataset_dir, tmp_path / "killed", *settings)
    run_killed(
        [REPO / "train_sft.py", *argv],
        tmp_path,
        """
        from paraphrx import checkpoints
        mark = checkpoints.write_checkpoint_marker
        def mark_then_die(folder, global_step):
            mark(folder, global_step)
            if global_step == 4:
                die()
        checkpoints.write_checkpoint_marker = mark_then_die
    """,
    )
    resumed = train_sft.main(*parse_recipe(argv))

    assert whole.state.global_step == resumed.state.global_step == 6, "early stopping's counter survived"
    assert whole.state.best_global_step == resumed.state.best_global_step
    figures = [
        [
            {k: v for k, v in h.items() if k in ("step", "loss", "eval_loss", "train_loss", "num_tokens")}
            for h in trainer.state.log_history
        ]
        for trainer in (whole, resumed)
    ]
    assert [sorted(h) for h in figures[0]] == [sorted(h) for h in figures[1]]
    for a, b in zip(*figures):
        assert a["step"] == b["step"] and a.get("num_tokens") == b.get("num_tokens")
        for key in ("loss", "eval_loss", "train_loss"):
            assert key not in a or math.isclose(a[key], b[key], rel_tol=1e-4), (a, b)
    step_losses = [h["loss"] for h in whole.state.log_history if "grad_norm" in h]
    assert len(step_losses) == 6
    (summary,) = [h for h in figures[1] if "train_loss" in h]  # the end-of-run evaluation is logged after it
    assert math.isclose(summary["train_loss"], sum(step_losses) / 6, rel_tol=1e-4), "the mean of all 6 steps"
    for folder in ("checkpoint-6", "."):  # trained after the resume; the final adapter (the best one)
        before, after = (adapter_tensors(tmp_path / run / folder) for run in ("whole", "killed"))
        assert {t.dtype for t in after.values()} == {t.dtype for t in before.values()}
        for name in before:
            cosine = torch.nn.functional.cosine_similarity(
                before[name].float().flatten(), after[name].float().flatten(), dim=0
            )
            assert cosine > 0.9999 and torch.allclose(before[name].float(), after[name].float(), atol=1e-2), name
    assert {t.dtype for t in adapter_tensors(tmp_path / "killed" / "checkpoint-6").values()} == {torch.bfloat16}


def test_killed_while_writing_trainer_state_resumes_from_the_checkpoint_before(
    tiny_model_dir, prepared_dataset_dir, tmp_path
):
    out = tmp_path / "torn"
    argv = tiny_argv(
        tiny_model_dir,
        prepared_dataset_dir,
        out,
        "--max_train_samples",
        "16",
        "--max_steps",
        "6",
        "--save_steps",
        "2",
        *NO_EVALUATION,
    )
    run_killed(
        [REPO / "train_sft.py", *argv],
        tmp_path,
        """
        from transformers.trainer_callback import TrainerState
        save = TrainerState.save_to_json
        def half_then_die(self, json_path):
            save(self, json_path)
            if "checkpoint-4" in str(json_path):
                with open(json_path, "r+b") as f:
                    f.truncate(f.seek(0, 2) // 2)
                die()
        TrainerState.save_to_json = half_then_die
    """,
    )
    with pytest.raises(json.JSONDecodeError):
        json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())  # what used to crash every rerun

    trainer = train_sft.main(*parse_recipe(argv))
    assert trainer.state.global_step == 6 and (out / COMPLETE_MARKER).exists()
    log = (tmp_path / "logs" / "tiny-bucket1-2_latest.log").read_text()
    assert f"skipping {out / 'checkpoint-4'}: no checkpoint_complete.json" in log
    assert f"resuming from {out / 'checkpoint-2'}" in log


def test_a_second_run_on_a_busy_folder_stops_at_once(tiny_model_dir, prepared_dataset_dir, tmp_path):
    """Two train_sft.py on one output_dir used to both exit 0, one's weights under the other's records."""
    out = tmp_path / "busy"
    first = start_python(
        [REPO / "train_sft.py", *tiny_argv(tiny_model_dir, prepared_dataset_dir, out)],
        tmp_path,
        """
        import time, transformers
        def hold(self, *args, **kwargs):
            print("training", flush=True)
            time.sleep(600)
        transformers.Trainer.train = hold
    """,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert first.stdout.readline().strip() == "training"
        start = time.monotonic()
        with pytest.raises(RunFolderError) as err:
            train_sft.main(*parse_recipe(tiny_argv(tiny_model_dir, prepared_dataset_dir, out, "--learning_rate", "1")))
        assert time.monotonic() - start < 30, "stops at once, before loading data or model"
        assert f"{out} is in use by another run (pid {first.pid} on " in str(err.value)
        assert "train_sft.py" in str(err.value) and "\n" not in str(err.value)
    finally:
        first.kill()
        first.wait()
    assert not (out / COMPLETE_MARKER).exists()


def test_overwrite_keeps_the_previous_run_until_the_new_one_completes(tiny_model_dir, prepared_dataset_dir, tmp_path):
    out = tmp_path / "replaced"
    short = [
        "--max_train_samples",
        "8",
        "--max_steps",
        "2",
        "--save_steps",
        "1",
        *NO_EVALUATION,
    ]
    train_sft.main(*parse_recipe(tiny_argv(tiny_model_dir, prepared_dataset_dir, out, *short)))
    previous = {name: (out / name).read_bytes() for name in ("adapter_model.safetensors", COMPLETE_MARKER)}

    argv = tiny_argv(
        tiny_model_dir, prepared_dataset_dir, out, *short, "--overwrite_output_dir", "true", "--learning_rate", "0.05"
    )
    run_killed(
        [REPO / "train_sft.py", *argv],
        tmp_path,
        """
        from paraphrx import checkpoints
        mark = checkpoints.write_checkpoint_marker
        def mark_then_die(folder, global_step):
            mark(folder, global_step)
            die()
        checkpoints.write_checkpoint_marker = mark_then_die
    """,
    )
    assert {name: (out / name).read_bytes() for name in previous} == previous, "the finished run is untouched"
    [staging] = [p for p in tmp_path.iterdir() if p.name.startswith(".replaced.tmp-")]
    assert (staging / "checkpoint-1" / "checkpoint_complete.json").is_file()

    train_sft.main(*parse_recipe(argv))  # the same command again: starts over beside the finished run, swaps in
    assert (out / "adapter_model.safetensors").read_bytes() != previous["adapter_model.safetensors"]
    assert yaml.safe_load((out / "recipe.yaml").read_text())["learning_rate"] == 0.05
    assert (out / COMPLETE_MARKER).is_file() and not any(p.name.startswith("checkpoint-") for p in out.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".replaced")) == [".replaced.lock"]


def test_a_crash_during_training_reaches_the_log_file_with_secrets_masked(
    tiny_model_dir, prepared_dataset_dir, tmp_path
):
    token = "hf_" + "Z9y8X7w6V5u4T3s2R1q0PONM"
    proc = run_python(
        [REPO / "train_sft.py", *tiny_argv(tiny_model_dir, prepared_dataset_dir, tmp_path / "crash")],
        tmp_path,
        """
        import os, trl
        step = trl.SFTTrainer.training_step
        def crash_at_step_2(self, *args, **kwargs):
            if self.state.global_step == 2:
                raise RuntimeError("device fell over while sending " + os.environ["HF_TOKEN"])
            return step(self, *args, **kwargs)
        trl.SFTTrainer.training_step = crash_at_step_2
    """,
        env={"HF_TOKEN": token},
    )
    assert proc.returncode == 1
    log = (tmp_path / "logs" / "tiny-bucket1-2_latest.log").read_text()
    assert "| ERROR " in log and "RuntimeError: device fell over while sending <HF_TOKEN>" in log
    assert "Traceback" in log and "crash_at_step_2" in log and "step 2/10" in log
    assert token not in log and token not in proc.stderr
