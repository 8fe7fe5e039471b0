"""Data parallelism on the CPU: the tiny recipe as 2 processes (gloo, launched by `accelerate launch`) trains the
same as 1 process with the same global batch, and its run folder gets one adapter, written once by the main process.

Why the first attempt did not match: `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate runs
multi-CPU jobs only through mpirun), so that run trained on half the global batch. Launched with the torchrun
launcher (`--multi_gpu`, which on a machine without GPUs plus the recipe's `use_cpu: true` means gloo on the CPU),
DDP matches one process once LoRA dropout is off (each rank draws its own dropout masks): the sampler shards the same
seeded permutation (rank r takes rows r*b..r*b+b-1 of every global batch) and transformers' default
`average_tokens_across_devices` divides each rank's summed token loss by the global completion-token count, so the
averaged gradient is the single-process token-weighted mean.
"""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import NO_EVALUATION, REPO, tiny_recipe

TINY = tiny_recipe("bucket1-4")
GLOBAL_BATCH, STEPS = 4, 4

# Runs train_sft.py as __main__ after wrapping safetensors' writer, so the test sees which rank wrote which file.
# It must wrap before peft/transformers are imported: they bind `save_file` at import time.
PROBE = """
import os, runpy, sys
import safetensors.torch as st

_save_file = st.save_file
record = os.environ["PARAPHRX_SAVE_LOG"]
rank = os.environ.get("RANK", "0")

def save_file(tensors, filename, metadata=None):
    with open(record, "a") as f:
        f.write(f"save {rank} {filename}\\n")
    return _save_file(tensors, filename, metadata)

st.save_file = save_file
with open(record, "a") as f:
    f.write(f"start {rank} {os.environ.get('WORLD_SIZE', '1')}\\n")
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path: Path, name: str, processes: int, model_dir: Path, data_dir: Path, timeout: int = 300):
    """Run the tiny recipe with `processes` ranks and GLOBAL_BATCH rows per optimizer step; the finished process."""
    out, record, probe = tmp_path / name, tmp_path / f"{name}.record", tmp_path / "probe.py"
    probe.write_text(PROBE)
    recipe = [
        str(TINY),
        "--model_name_or_path",
        str(model_dir),
        "--dataset_name",
        str(data_dir),
        "--output_dir",
        str(out),
        "--log_dir",
        str(tmp_path / "logs"),
        "--run_name",
        f"ddp-{name}",
        "--max_train_samples",
        "16",
        "--max_steps",
        str(STEPS),
        "--warmup_steps",
        "0",
        "--per_device_train_batch_size",
        str(GLOBAL_BATCH // processes),
        "--gradient_accumulation_steps",
        "1",
        "--lora_dropout",
        "0",
        *NO_EVALUATION,
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--disable_tqdm",
        "true",
    ]
    if processes == 1:
        launcher = [sys.executable, str(probe)]
    else:  # see the module docstring: `--cpu` would silently start one process
        launcher = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            str(probe),
        ]
    env = {
        **os.environ,
        "PARAPHRX_SAVE_LOG": str(record),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    return subprocess.run(
        [*launcher, str(REPO / "train_sft.py"), *recipe],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train(tmp_path: Path, name: str, processes: int, model_dir: Path, data_dir: Path) -> tuple[Path, list[str]]:
    """`launch`, which must succeed; (run folder, probe log)."""
    proc = launch(tmp_path, name, processes, model_dir, data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / name, (tmp_path / f"{name}.record").read_text().splitlines()


@pytest.fixture(scope="module")
def runs(tiny_model_dir, prepared_dataset_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    return {n: train(tmp, f"{n}proc", n, tiny_model_dir, prepared_dataset_dir) for n in (1, 2)}


def train_logs(out: Path) -> list[dict]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [h for h in state["log_history"] if "loss" in h]


def test_two_processes_really_ran(runs):
    starts = sorted(line.split()[1:] for line in runs[2][1] if line.startswith("start "))
    assert starts == [["0", "2"], ["1", "2"]]


def test_ddp_loss_and_grad_norm_match_one_process(runs):
    single, ddp = train_logs(runs[1][0]), train_logs(runs[2][0])
    assert [h["step"] for h in single] == [h["step"] for h in ddp] == list(range(1, STEPS + 1))
    for one, two in zip(single, ddp):
        # Same rows and weights; only bf16 rounding differs (the per-rank batches pad to different widths).
        assert math.isclose(one["loss"], two["loss"], rel_tol=2e-4), (single, ddp)
        assert math.isclose(one["grad_norm"], two["grad_norm"], rel_tol=1e-2), (single, ddp)
        assert one["num_tokens"] == two["num_tokens"]  # gathered over ranks: the same completion tokens were seen
    assert single[-1]["loss"] < single[0]["loss"], "the adapter trained"


def test_adapter_written_once_by_the_main_process(runs):
    out, record = runs[2]
    saves = [line.split(maxsplit=2)[1:] for line in record if line.startswith("save ")]
    assert saves and {rank for rank, _ in saves} == {"0"}, saves
    paths = [path for _, path in saves]
    assert len(paths) == len(set(paths)), "a file was written twice"
    final = [p for p in paths if Path(p).parent.name == ".final"]
    assert [Path(p).name for p in final] == ["adapter_model.safetensors"]  # staged, then renamed into place
    assert [p.relative_to(out) for p in out.rglob("*.safetensors")] == [Path("adapter_model.safetensors")]
    assert not [p.name for p in out.iterdir() if p.name.startswith((".", "checkpoint-"))]
    assert (out / "run_complete.json").is_file()


def test_ddp_adapter_loads_and_equals_the_single_process_one(runs, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, str(runs[2][0]))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 2 * 7 and all(p.abs().sum() > 0 for p in lora_b), "trained LoRA B weights were loaded"
    one, two = (load_file(out / "adapter_model.safetensors") for out, _ in (runs[1], runs[2]))
    assert one.keys() == two.keys()
    for name in one:
        # Not elementwise: Adam divides by sqrt(v), so an element whose gradient is ~0 can step either way on bf16
        # noise. The update as a whole must agree (lora_B starts at zero, so its direction is all training).
        cosine = torch.nn.functional.cosine_similarity(one[name].float().flatten(), two[name].float().flatten(), dim=0)
        assert cosine > 0.998, (name, cosine.item())


def test_two_processes_on_a_busy_folder_both_stop_at_once(tiny_model_dir, prepared_dataset_dir, tmp_path):
    """Only the main rank takes the run folder's lock; the other learns the outcome from it instead of waiting."""
    from paraphrx.run_lock import FolderLock

    with FolderLock(tmp_path / "busy"):
        proc = launch(tmp_path, "busy", 2, tiny_model_dir, prepared_dataset_dir, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count(f"{tmp_path / 'busy'} is in use by another run (pid {os.getpid()} on ") == 2, proc.stderr[
        -3000:
    ]  # one line per rank
    assert not (tmp_path / "busy").exists() and not (tmp_path / "busy.record").read_text().count("save ")


@pytest.mark.parametrize("internal_call, expected", [(False, "FULL_STATE_DICT"), (True, "SHARDED_STATE_DICT")])
def test_fsdp_final_save_gathers_one_adapter(monkeypatch, internal_call, expected):
    """FSDP needs GPUs, so this checks the switch itself: Trainer.save_model writes nothing under SHARDED_STATE_DICT
    (fsdp_qlora.yaml's type, kept for checkpoints); the final save must gather the full adapter."""
    from types import SimpleNamespace

    from accelerate.utils import FullyShardedDataParallelPlugin
    from trl import SFTTrainer

    from paraphrx.trainer_factory import ParaphrxSFTTrainer

    seen = []
    monkeypatch.setattr(SFTTrainer, "is_fsdp_enabled", True, raising=False)
    monkeypatch.setattr(
        SFTTrainer,
        "save_model",
        lambda self, output_dir=None, _internal_call=False: seen.append(
            self.accelerator.state.fsdp_plugin.state_dict_type.name
        ),
    )
    trainer = object.__new__(ParaphrxSFTTrainer)
    plugin = FullyShardedDataParallelPlugin(state_dict_type="SHARDED_STATE_DICT")
    trainer.accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin))
    trainer.args = SimpleNamespace(process_index=1)  # not the main process: it writes no adapter_config.json
    trainer.save_model("out", _internal_call=internal_call)
    assert seen == [expected]
