"""Batched greedy generation on the tiny Gemma-2 (float32, eager): same text as one prompt at a time."""

import pytest
import torch
from trl import ModelConfig

from paraphrx.eval.generation import (
    BASE,
    active_model,
    attach_adapters,
    cut_at_input_length,
    for_generation,
    generate_batched,
    generate_per_example,
    greedy_config,
    merge_adapter,
)
from paraphrx.modeling import load_base_model, load_tokenizer
from tests.conftest import make_adapter

PROMPTS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nGive three tips for staying healthy.\n\n### Response:\n",
    "Hi",
    "### Instruction:\nWHAT IS THE CAPITAL OF FRANCE?\n\n### Response:\n",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Translate: el gato está en la mesa",
    "2+2=",
    "Write a haiku about the sea, the sky, the wind, and everything in between them all.",
]


@pytest.fixture(scope="module")
def model_args(tiny_model_dir):
    return ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32", attn_implementation="eager")


@pytest.fixture(scope="module")
def tokenizer(model_args):
    return for_generation(load_tokenizer(model_args))


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {"a1": make_adapter(tiny_model_dir, root / "a1", 1), "a2": make_adapter(tiny_model_dir, root / "a2", 2)}


def test_batched_greedy_equals_unbatched(model_args, tokenizer):
    model = load_base_model(model_args)
    batched = generate_batched(model, tokenizer, PROMPTS, batch_size=3, max_new_tokens=10)
    single = generate_per_example(model, tokenizer, PROMPTS, max_new_tokens=10)
    assert batched == single
    assert all(batched) and len(set(batched)) > 1  # real, distinct answers, not empty strings


def test_cut_is_at_the_padded_input_length_not_the_attention_mask_length(model_args, tokenizer):
    model = load_base_model(model_args)
    long, short = PROMPTS[0], PROMPTS[1]
    inputs = tokenizer([long, short], padding=True, return_tensors="pt")
    assert inputs["attention_mask"][1].sum() < inputs["input_ids"].shape[1]  # the short row is left-padded
    config = greedy_config(model, tokenizer, max_new_tokens=6)
    with torch.inference_mode():
        output = model.generate(**inputs, generation_config=config)
    expected = generate_per_example(model, tokenizer, [short], max_new_tokens=6)[0]
    ours = tokenizer.decode(cut_at_input_length(output, inputs["input_ids"])[1], skip_special_tokens=True)
    upstream = tokenizer.decode(output[1, int(inputs["attention_mask"][1].sum()) :], skip_special_tokens=True)
    assert ours == expected
    assert upstream != expected  # the upstream cut keeps the prompt's tail in the answer
    assert upstream.endswith(expected)


def test_adapters_switch_and_base_is_the_plain_model(model_args, tokenizer, adapters):
    plain = generate_batched(load_base_model(model_args), tokenizer, PROMPTS, batch_size=4, max_new_tokens=8)
    model = attach_adapters(load_base_model(model_args), adapters)
    answers = {}
    for name in ("a1", BASE, "a2", "a1"):
        with active_model(model, name) as active:
            answers.setdefault(name, []).append(generate_batched(active, tokenizer, PROMPTS, 4, 8))
    assert answers[BASE][0] == plain  # disable_adapter() really is the base model
    assert answers["a1"][0] != plain and answers["a2"][0] != answers["a1"][0]  # each adapter changes the text
    assert answers["a1"][0] == answers["a1"][1]  # switching back gives the same answers
    with active_model(model, "a2") as active:  # and batched == unbatched holds with an adapter too
        assert generate_per_example(active, tokenizer, PROMPTS, 8) == answers["a2"][0]


def test_merged_adapter_matches_unmerged_in_float32(model_args, tokenizer, adapters):
    merged = merge_adapter(load_base_model(model_args), adapters["a1"])
    assert not hasattr(merged, "peft_config")
    unmerged = attach_adapters(load_base_model(model_args), {"a1": adapters["a1"]})
    with active_model(unmerged, "a1") as active:
        expected = generate_batched(active, tokenizer, PROMPTS, 4, 8)
    assert generate_batched(merged, tokenizer, PROMPTS, 4, 8) == expected


def test_greedy_config_keeps_every_stop_id_and_needs_left_padding(model_args, tokenizer):
    model = load_base_model(model_args)
    config = greedy_config(model, tokenizer, max_new_tokens=5)
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert set(config.eos_token_id) == {tokenizer.eos_token_id, end_of_turn}
    assert config.do_sample is False and config.max_new_tokens == 5
    tokenizer.padding_side = "right"
    try:
        with pytest.raises(ValueError, match="left"):
            generate_batched(model, tokenizer, PROMPTS[:2])
    finally:
        tokenizer.padding_side = "left"
