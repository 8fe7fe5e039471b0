"""Shared fixtures: the shipped data files and one tiny offline Gemma-2 per test session."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ALPACA = REPO / "data" / "alpaca_gemma-2-2b-it.json"
GSM8K = REPO / "data" / "gsm8k_gemma-2-2b-it.json"


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
        command = [str(cli), "serve", str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(port),
                   "--device", "cpu", "--dtype", "float32"]
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
