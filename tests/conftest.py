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
