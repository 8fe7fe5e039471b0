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
