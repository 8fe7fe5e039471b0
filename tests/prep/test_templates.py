"""Exact prompt text: the seed's Alpaca template, and Gemma's chat template as the tokenizer renders it."""

import json

import pyarrow as pa
import pytest

from prep.templates import (
    ALPACA_NO_INPUT,
    ALPACA_WITH_INPUT,
    alpaca_prompt,
    completion_text,
    gemma_prompt,
    prompt_column,
)


def test_alpaca_without_input_is_the_seed_text():
    assert alpaca_prompt("Name a color.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nName a color.\n\n### Response:\n"
    )


def test_alpaca_with_input_is_the_seed_text():
    assert alpaca_prompt("Sum these.", "1 2 {3}") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSum these.\n\n### Input:\n1 2 {3}\n\n### Response:\n"
    )


def test_alpaca_keeps_odd_characters():
    text = "  zero\u200dwidth\x0cfeed\x08back  "
    assert f"### Instruction:\n{text}\n\n### Response:\n" in alpaca_prompt(text)


def test_gemma_text():
    assert gemma_prompt(" Hi \n", "ctx") == "<start_of_turn>user\nHi \n\n\nctx<end_of_turn>\n<start_of_turn>model\n"
    assert completion_text("gemma", "4") == "4<end_of_turn>\n" and completion_text("alpaca", "4") == "4"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _rendered(tokenizer, content):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith(tokenizer.bos_token)
    return text[len(tokenizer.bos_token) :]


def test_gemma_prompt_equals_chat_template_on_every_shipped_paraphrase(tokenizer, alpaca_path, gsm8k_path):
    """The column path prep uses, on every shipped paraphrase (with and without input), against the real template."""
    instructions, inputs = [], []
    for path in (alpaca_path, gsm8k_path):
        for row in json.loads(path.read_text(encoding="utf-8")):
            instructions += [p["paraphrase"] for p in row["paraphrases"]]
            inputs += [row["input"]] * len(row["paraphrases"])
    assert len(instructions) == 12 * 268 + 8 * 11 and any(inputs)
    prompts = prompt_column("gemma", pa.array(instructions), pa.array(inputs)).to_pylist()
    for prompt, instruction, input_text in zip(prompts, instructions, inputs):
        assert prompt == _rendered(tokenizer, f"{instruction}\n\n{input_text}" if input_text else instruction)


def test_alpaca_column_matches_format_on_every_shipped_paraphrase(alpaca_path):
    rows = json.loads(alpaca_path.read_text(encoding="utf-8"))
    pairs = [(p["paraphrase"], row["input"]) for row in rows for p in row["paraphrases"]]
    prompts = prompt_column("alpaca", pa.array([i for i, _ in pairs]), pa.array([x for _, x in pairs])).to_pylist()
    for prompt, (instruction, input_text) in zip(prompts, pairs):
        template = ALPACA_WITH_INPUT if input_text else ALPACA_NO_INPUT
        assert prompt == template.format(instruction=instruction, input=input_text)


@pytest.mark.parametrize(
    "text", ["\x0c form feed first \n", "\u200dzwj kept\u200d", "\u3000ideographic space\u2003", "tab\t"]
)
def test_gemma_trim_matches_jinja(tokenizer, text):
    assert gemma_prompt(text) == _rendered(tokenizer, text)


def test_no_bos_in_prompts_and_tokenizer_adds_one(tokenizer):
    for prompt in (alpaca_prompt("Hi"), gemma_prompt("Hi")):
        assert tokenizer.bos_token not in prompt
        ids = tokenizer(prompt)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
