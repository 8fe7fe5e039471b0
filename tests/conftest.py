"""Shared fixtures and helpers: the repository's paths, the shipped data files, one tiny offline Gemma-2 and one
prepared dataset per test session, and LoRA adapters for the evaluation tests.

Test modules import the plain helpers (`from tests.conftest import REPO, tiny_recipe, make_adapter`); fixtures come
by name as usual.
"""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ALPACA = REPO / "data" / "alpaca_gemma-2-2b-it.json"
# Overrides for a run that never evaluates (the recipes evaluate, keep the best adapter and stop early by default)
NO_EVALUATION = ("--eval_strategy", "no", "--load_best_model_at_end", "false", "--early_stopping_patience", "null")
GSM8K = REPO / "data" / "gsm8k_gemma-2-2b-it.json"


def tiny_recipe(name: str = "bucket1") -> str:
    """The path of a shipped tiny recipe, e.g. `tiny_recipe("bucket1-2")` -> recipes/tiny/bucket1-2.yaml."""
    return str(REPO / "recipes" / "tiny" / f"{name}.yaml")


def make_adapter(
    model_dir: Path, out_dir: Path, seed: int, targets=("q_proj", "v_proj", "down_proj"), r: int = 4, **lora_kwargs
) -> Path:
    """A LoRA adapter on the tiny model whose B weights are random (A is PEFT's random init, seeded), so it visibly
    changes the answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)  # PEFT draws A from the global generator
    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), task_type="CAUSAL_LM", **lora_kwargs)
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def alpaca_path() -> Path:
    return ALPACA


@pytest.fixture(scope="session")
def gsm8k_path() -> Path:
    return GSM8K


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Gemma-2 (config + offline-trained tokenizer) saved like a Hub model folder."""
    from paraphrx.tiny_gemma import save_tiny_gemma

    return save_tiny_gemma(tmp_path_factory.mktemp("models") / "tiny-gemma2", [ALPACA, GSM8K])


@pytest.fixture(scope="session")
def prepared_dataset_dir(tmp_path_factory) -> Path:
    """`python -m prep` on both shipped samples (alpaca + gsm8k), default flags: a Hub-layout dataset folder with
    splits bucket1, bucket1_2, bucket1_3, bucket1_4, bucket1_5, validation, test. Load it with `load_prepared`."""
    from prep.cli import run
    from prep.config import PrepConfig

    out = tmp_path_factory.mktemp("prepared") / "paraphrx-sample"
    config = PrepConfig(data_paths=[str(ALPACA), str(GSM8K)], output_dir=str(out))
    return run(config, command=f"python -m prep --data_paths {ALPACA} {GSM8K} --output_dir {out}")


@pytest.fixture(scope="session")
def eval_adapters(tiny_model_dir, tmp_path_factory) -> list[Path]:
    """Two adapter folders as training names them (tiny-bucket1, tiny-bucket1-2), each with other random weights."""
    root = tmp_path_factory.mktemp("outputs")
    return [
        make_adapter(tiny_model_dir, root / "tiny-bucket1", 1),
        make_adapter(tiny_model_dir, root / "tiny-bucket1-2", 2),
    ]


class FakeHfApi:
    """huggingface_hub.HfApi as a recorder of the calls made (monkeypatch it in): never the network."""

    calls: list = []
    existing: dict = {}  # repo_id -> private, the repos already on the fake Hub

    def __init__(self, token=None, **kwargs):
        self.calls.append(("init", {"token": token, **kwargs}))

    def repo_info(self, repo_id, repo_type=None, **kwargs):
        from types import SimpleNamespace

        from huggingface_hub.errors import RepositoryNotFoundError

        self.calls.append(("repo_info", {"repo_id": repo_id, "repo_type": repo_type}))
        if repo_id not in self.existing:
            request = SimpleNamespace(url=f"https://huggingface.co/api/{repo_type or 'model'}s/{repo_id}")
            raise RepositoryNotFoundError(
                "404 Repository Not Found", response=SimpleNamespace(headers={}, request=request)
            )
        return SimpleNamespace(id=repo_id, private=self.existing[repo_id])

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        kind = "datasets/" if kwargs.get("repo_type") == "dataset" else ""
        return f"https://huggingface.co/{kind}{repo_id}"

    def upload_folder(self, **kwargs):
        from pathlib import Path

        kwargs["files"] = sorted(
            str(p.relative_to(kwargs["folder_path"])) for p in Path(kwargs["folder_path"]).rglob("*") if p.is_file()
        )
        self.calls.append(("upload_folder", kwargs))
        kind = "datasets/" if kwargs.get("repo_type") == "dataset" else ""
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kind}{kwargs['repo_id']}/commit/abc"})()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def judge_server(tiny_model_dir, tmp_path_factory):
    """`transformers serve` on the tiny model at a free local port: a real OpenAI-compatible chat endpoint, offline.
    Its replies are the tiny model's noise, which no judge parser accepts. Yields (base URL, model name)."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cli = Path(sys.executable).parent / "transformers"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log.open("w") as out:
        command = [
            str(cli),
            "serve",
            str(tiny_model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
            "--dtype",
            "float32",
        ]
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1", str(tiny_model_dir)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# A kill at a named instant: `patch` is Python run before the entry point; it wraps the library call at which to die
# and calls `die()` there (SIGKILL: no cleanup handler, no flush, like `kill -9` or the OOM killer).
_KILL_WRAPPER = """
import os, runpy, signal, sys

def die():
    os.kill(os.getpid(), signal.SIGKILL)

{patch}
sys.argv = sys.argv[1:]
if sys.argv[0] == "-m":
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def start_python(argv, cwd, patch: str = "", env: dict | None = None, **popen) -> subprocess.Popen:
    """Start `python argv...` (a script path or `-m module`) in a fresh process after running `patch`."""
    wrapper = Path(cwd) / "_entry_wrapper.py"
    wrapper.write_text(_KILL_WRAPPER.format(patch=textwrap.dedent(patch)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, str(wrapper), *map(str, argv)], cwd=cwd, env=env, text=True, **popen)


def run_python(argv, cwd, patch: str = "", env: dict | None = None, timeout: int = 300):
    """`start_python` to the end; the completed process with its stdout and stderr."""
    proc = start_python(argv, cwd, patch, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_killed(argv, cwd, patch: str, **kwargs):
    """`run_python` that must end by SIGKILL at the instant `patch` names (fails the test otherwise)."""
    proc = run_python(argv, cwd, patch, **kwargs)
    assert proc.returncode == -signal.SIGKILL, (
        f"not killed at the named instant (exit {proc.returncode}):\n" + proc.stderr[-3000:]
    )
    return proc


def prepared_row(**fields) -> dict:
    """One row of a prepared split (every column of the data contract), with `fields` changed."""
    row = {
        "prompt": "p",
        "completion": "c",
        "reference": "r",
        "source": "alpaca",
        "prompt_count": 1,
        "instruct_type": "instruction_original",
        "paraphrase": "p",
        "input": "",
        "bucket": 1,
        "task_score": 9.0,
    }
    return {**row, **fields}


def write_prepared(folder: Path, rows: list[dict]) -> Path:
    """A prepared-dataset folder with one `test` split holding `rows` (for hand-made evaluation inputs)."""
    from datasets import Dataset

    (folder / "data").mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: test\n    path: data/test-*.parquet\n---\n",
        encoding="utf-8",
    )
    return folder
