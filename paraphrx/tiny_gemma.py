"""Build a tiny Gemma-2 offline, saved like a Hub model folder.

CI and the offline demo cannot download `google/gemma-2-2b-it`, so they load this instead through the very same
`AutoTokenizer.from_pretrained` / `AutoModelForCausalLM.from_pretrained` calls. It keeps what matters for the
pipeline: Gemma's special tokens (`<bos>` added by the tokenizer, `<eos>`, `<pad>`, `<start_of_turn>`,
`<end_of_turn>`), Gemma's chat template, and Gemma-2's architecture with both soft-capping constants.

    python -m paraphrx.tiny_gemma --output_dir models/tiny-gemma2
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from paraphrx.atomic_folder import atomic_folder
from paraphrx.recipe_cli import parse_recipe_or_exit

# Gemma-2's special tokens, in Gemma's order for the first five ids (pad=0, eos=1, bos=2, unk=3).
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]

# The chat template shipped with google/gemma-2-2b-it (no system role; assistant is called "model").
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

DEFAULT_CORPUS = Path(__file__).resolve().parent.parent / "data" / "alpaca_gemma-2-2b-it.json"


def _corpus(paths: list[Path]):
    """Every text field of the shipped paraphrase files, so the tokenizer sees real prompts and answers."""
    for path in paths:
        for row in json.loads(path.read_text(encoding="utf-8")):
            yield row["instruction_original"]
            yield row.get("input") or ""
            yield row["output"]
            for p in row["paraphrases"]:
                yield p["paraphrase"]
                yield p["answer"]
    # The prompt templates' fixed words, so they tokenize compactly.
    yield "Below is an instruction that describes a task. ### Instruction: ### Input: ### Response: user model"


def build_tokenizer(corpus_paths: list[Path], vocab_size: int = 4096):
    """A byte-level BPE (no unknown characters: zero-width joiners and form feeds survive) with Gemma's specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(corpus_paths), trainer=trainer)
    bos_id = tok.token_to_id("<bos>")
    # Like Gemma: <bos> is prepended to every encoded text, <eos> is not appended.
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        chat_template=GEMMA_CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=2048,
    )


def build_model(tokenizer, seed: int = 0, hidden_size: int = 64, num_layers: int = 2):
    """Gemma2ForCausalLM with gemma-2-2b-it's structure (GQA, sliding/global layers, soft-capping) at toy size."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, GenerationConfig

    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        query_pre_attn_scalar=hidden_size // 4,
        max_position_embeddings=2048,
        sliding_window=64,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(config)
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    # As in gemma-2-2b-it: generation stops at <eos> or <end_of_turn>.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, end_of_turn],
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def save_tiny_gemma(output_dir: str | Path, corpus_paths: list[Path] | None = None, seed: int = 0) -> Path:
    """Write tokenizer + model to `output_dir` as a whole (built aside, then swapped in)."""
    output_dir = Path(output_dir)
    tokenizer = build_tokenizer(corpus_paths or [DEFAULT_CORPUS])
    model = build_model(tokenizer, seed=seed)
    with atomic_folder(output_dir) as tmp:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
    return output_dir


@dataclass
class TinyGemmaArguments:
    output_dir: str = field(default="models/tiny-gemma2", metadata={"help": "Where to save the model folder."})
    corpus: list[str] = field(
        default_factory=lambda: [str(DEFAULT_CORPUS)],
        metadata={"help": "Paraphrase JSON files the tokenizer is trained on."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the random weights."})


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_recipe_or_exit(argv, (TinyGemmaArguments,))
    path = save_tiny_gemma(args.output_dir, [Path(p) for p in args.corpus], args.seed)
    print(f"tiny Gemma-2 written to {path}")


if __name__ == "__main__":
    main()
