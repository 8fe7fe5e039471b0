"""The fast-path decision, made once when a recipe is parsed: CUDA, the launch, and the library internals it needs."""

import pytest
import torch
from loguru import logger

from paraphrx import library_internals
from paraphrx.config import fast_path_enabled
from paraphrx.recipe_cli import RecipeError, parse_recipe
from tests.conftest import tiny_recipe


def test_fast_path_choice_resolution():
    assert fast_path_enabled("off") is False
    assert fast_path_enabled("auto") is torch.cuda.is_available()
    with pytest.raises(ValueError, match="fast_path must be one of"):
        fast_path_enabled("fast")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            fast_path_enabled("on")


def test_fast_path_stands_down_under_fsdp_and_deepspeed(monkeypatch):
    """FSDP-QLoRA / ZeRO-3 shard the 4-bit base; dequantizing it would defeat them, so auto is off and on refuses."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert fast_path_enabled("auto") is True
    for engine in ("FSDP", "DEEPSPEED"):
        monkeypatch.setenv(f"ACCELERATE_USE_{engine}", "true")
        assert fast_path_enabled("auto") is False
        with pytest.raises(ValueError, match=f"a {engine} launch shards the 4-bit base"):
            fast_path_enabled("on")
        monkeypatch.delenv(f"ACCELERATE_USE_{engine}")


def test_a_recipe_that_trains_on_the_cpu_stays_off_the_fast_path_on_a_gpu_machine(monkeypatch):
    """The tiny recipes set `use_cpu: true`: on a GPU box too they train on the plain CPU path, model on the CPU."""
    from paraphrx.modeling import device_map

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert fast_path_enabled("auto", use_cpu=True) is False and fast_path_enabled("auto") is True
    with pytest.raises(ValueError, match=r"fast_path: on is not possible here: the recipe trains on the CPU"):
        fast_path_enabled("on", use_cpu=True)
    assert parse_recipe([tiny_recipe()])[1].use_fast_path is False
    assert device_map(use_cpu=True) is None and device_map() == {"": 0}


def test_missing_library_internals_turn_auto_off_with_one_warning_and_on_into_a_refusal(monkeypatch):
    """A TRL release without a name the fast path uses: `auto` trains on the plain path and says so once; `on` is
    one line naming what is missing (a recipe error, exit 2)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine
    missing = "trl.kernels.chunked_logprob._forward_kernel"
    monkeypatch.setattr(library_internals, "MISSING", [missing])
    lines = []
    sink = logger.add(lines.append, level="DEBUG", format="{level} {message}")
    try:
        assert fast_path_enabled("auto") is False
    finally:
        logger.remove(sink)
    assert (
        len(lines) == 1
        and lines[0].startswith("WARNING fast_path: auto trains on the plain path")
        and missing in lines[0]
    )
    with pytest.raises(
        ValueError, match=f"fast_path: on is not possible here: this TRL/transformers/torch lacks {missing}"
    ):
        fast_path_enabled("on")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU would not take the fast path anyway
    sink = logger.add(lines.append, level="DEBUG", format="{level} {message}")
    try:
        assert fast_path_enabled("auto") is False
    finally:
        logger.remove(sink)
    assert len(lines) == 1  # no second warning


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_recipe_asking_for_the_fast_path_on_a_cpu_is_a_one_line_recipe_error():
    with pytest.raises(RecipeError, match=r"^command line: fast_path: on is not possible here: it needs a CUDA"):
        parse_recipe(["recipes/tiny/bucket1.yaml", "--fast_path", "on"])
    assert parse_recipe(["recipes/tiny/bucket1.yaml"])[1].fast_path == "auto"


def test_the_decision_is_not_a_recipe_key():
    _, training_args, _ = parse_recipe([tiny_recipe(), "--fast_path", "off"])
    assert training_args.use_fast_path is False and "use_fast_path" not in training_args.to_dict()
    with pytest.raises(RecipeError, match="unknown option '--use_fast_path'"):
        parse_recipe([tiny_recipe(), "--use_fast_path", "true"])
