import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tokenizer_has_gemma_specials_and_template(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == ("<pad>", "<eos>", "<bos>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    ids = tok("Hi\u200d there\x0c\b").input_ids
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "Hi\u200d there\x0c\b"  # byte-level: nothing is lost
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi "}, {"role": "assistant", "content": "Yo"}], tokenize=False
    )
    assert text == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n"
    assert tok.convert_tokens_to_ids("<end_of_turn>") != tok.unk_token_id


def test_model_is_gemma2_with_soft_capping(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "gemma2"
    assert config["attn_logit_softcapping"] == 50.0 and config["final_logit_softcapping"] == 30.0
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    logits = model(torch.tensor([[2, 10, 11, 12]])).logits
    assert logits.shape[-1] == config["vocab_size"]
    assert logits.abs().max() <= 30.0  # final soft-capping bounds the logits
    eos = AutoTokenizer.from_pretrained(tiny_model_dir).convert_tokens_to_ids("<end_of_turn>")
    assert eos in model.generation_config.eos_token_id
