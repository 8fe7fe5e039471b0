"""Prompt/completion text: the seed's Alpaca template, or Gemma's chat template for one user turn.

Texts are built on whole Arrow columns (C++ string kernels, no Python loop), which is how prep fills millions of
rows; `alpaca_prompt`, `gemma_prompt` and `completion_text` render single strings through the same code. Neither
prompt contains `<bos>`: the tokenizer adds it, and TRL appends `<eos>` to string completions itself. The Gemma
text is exactly what gemma-2-2b-it's chat template renders with add_generation_prompt, minus `<bos>` (tests compare
it with `tokenizer.apply_chat_template` on every shipped paraphrase).
"""

from __future__ import annotations

import sys

import pyarrow as pa
import pyarrow.compute as pc

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
GEMMA_USER_TURN = "<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n"
GEMMA_END_OF_TURN = "<end_of_turn>\n"
TEMPLATES = ("alpaca", "gemma")
# Jinja's `| trim` is Python's str.strip(): exactly these code points (form feeds yes, zero-width joiners no).
PY_WHITESPACE = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())


def _around(template: str, field: str) -> tuple[str, str]:
    before, after = template.split("{" + field + "}")
    return before, after


def _join(*parts):
    return pc.binary_join_element_wise(*parts, "")


def prompt_column(template: str, instruction, input_text):
    """Prompts for equally long (chunked) arrays of instructions (paraphrases) and inputs ('' = no input)."""
    has_input = pc.greater(pc.binary_length(input_text), 0)
    if template == "alpaca":
        head_with, rest_with = _around(ALPACA_WITH_INPUT, "instruction")
        middle, tail = _around(rest_with, "input")
        head_without, tail_without = _around(ALPACA_NO_INPUT, "instruction")
        with_input = _join(head_with, instruction, middle, input_text, tail)
        return pc.if_else(has_input, with_input, _join(head_without, instruction, tail_without))
    if template == "gemma":
        content = pc.if_else(has_input, _join(instruction, "\n\n", input_text), instruction)
        head, tail = _around(GEMMA_USER_TURN, "content")
        return _join(head, pc.utf8_trim(content, characters=PY_WHITESPACE), tail)
    raise ValueError(f"unknown template {template!r}; choose from {TEMPLATES}")


def completion_column(template: str, answer):
    """Completions: the answer unchanged (alpaca), or the answer closing the model's turn (gemma)."""
    return _join(answer, GEMMA_END_OF_TURN) if template == "gemma" else answer


def _one(column: pa.Array) -> str:
    return column[0].as_py()


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    return _one(prompt_column("alpaca", pa.array([instruction], pa.string()), pa.array([input_text], pa.string())))


def gemma_prompt(instruction: str, input_text: str = "") -> str:
    return _one(prompt_column("gemma", pa.array([instruction], pa.string()), pa.array([input_text], pa.string())))


def completion_text(template: str, answer: str) -> str:
    return _one(completion_column(template, pa.array([answer], pa.string())))
