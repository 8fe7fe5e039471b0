"""The collator's host-side trained positions, and the LM head that scores them, against TRL's boolean-index head."""

import copy
import pickle
from contextlib import ExitStack

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
from trl.trainer.utils import add_fused_lm_head

from paraphrx.completion_positions import LabelPositionsCollator, position_lm_head

# Two examples as SFTTrainer's prepared prompt/completion rows reach the collator: prompt labels are -100.
EXAMPLES = [
    {"input_ids": [2, 11, 12, 13, 21, 22, 1], "labels": [-100, -100, -100, -100, 21, 22, 1]},
    {"input_ids": [2, 14, 23, 24, 25, 1], "labels": [-100, -100, 23, 24, 25, 1]},
]


def _collator(padding_free=True):
    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free)


def test_positions_are_the_shifted_labels_that_train():
    batch = LabelPositionsCollator(_collator())(copy.deepcopy(EXAMPLES))
    # padding-free: one row [2 11 12 13 21 22 1 | 2 14 23 24 25 1]; the label at flat index i+1 is predicted at i
    assert batch["input_ids"].tolist() == [[2, 11, 12, 13, 21, 22, 1, 2, 14, 23, 24, 25, 1]]
    assert batch["label_positions"].tolist() == [3, 4, 5, 8, 9, 10, 11]
    assert batch["label_targets"].tolist() == [21, 22, 1, 23, 24, 25, 1]
    assert batch["label_targets"].tolist() == batch["labels"][0, 1:][batch["label_positions"]].tolist()
    assert batch["label_positions"].dtype == torch.long


def test_positions_index_the_flattened_rows_of_a_padded_batch():
    batch = LabelPositionsCollator(_collator(padding_free=False))(copy.deepcopy(EXAMPLES))
    shifted = batch["labels"][:, 1:]  # 2 rows of 6 next-token labels; the second row has one pad label (-100)
    assert shifted.shape == (2, 6)
    assert batch["label_positions"].tolist() == [3, 4, 5, 6 + 1, 6 + 2, 6 + 3, 6 + 4]
    assert batch["label_targets"].tolist() == shifted.reshape(-1)[batch["label_positions"]].tolist()


def test_wrapper_passes_the_collators_attributes_and_batches_without_labels():
    wrapped = LabelPositionsCollator(_collator())
    assert wrapped.pad_token_id == 0 and wrapped.padding_free
    plain = LabelPositionsCollator(lambda examples: {"input_ids": torch.tensor([[5, 6]])})
    assert set(plain([{}])) == {"input_ids"}
    # a spawned dataloader worker gets the collator pickled
    copied = pickle.loads(pickle.dumps(wrapped))
    assert copied.pad_token_id == 0
    assert copied(copy.deepcopy(EXAMPLES))["label_positions"].tolist() == [3, 4, 5, 8, 9, 10, 11]


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # what SFTTrainer does
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    for name, param in model.named_parameters():  # non-zero B, so the adapters change the logits and get gradients
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_position_head_scores_what_trls_boolean_index_head_scores(lora_model):
    batch = LabelPositionsCollator(_collator())(copy.deepcopy(EXAMPLES))
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "labels": batch["labels"]}
    lora_model.zero_grad()
    trl = lora_model(**inputs, fused_lm_head=True)
    mask = trl.label_mask
    (-trl.log_probs.sum()).backward()
    trl_grads = _grads(lora_model)

    base = lora_model.get_base_model()
    trl_forward = base.forward
    undo = ExitStack()
    assert undo.enter_context(position_lm_head(base))
    lora_model.zero_grad()
    ours = lora_model(
        input_ids=inputs["input_ids"],
        position_ids=inputs["position_ids"],
        fused_lm_head=True,
        label_positions=batch["label_positions"],
        label_targets=batch["label_targets"],
    )
    (-ours.log_probs.sum()).backward()
    our_grads = _grads(lora_model)

    assert ours.log_probs.shape == (int(mask.sum()),) == (7,)  # one entry per trained token, in order
    torch.testing.assert_close(ours.log_probs, trl.log_probs[mask], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.entropy, trl.entropy[mask], rtol=1e-5, atol=1e-6)
    assert torch.equal(ours.is_top1, trl.is_top1[mask])
    assert (ours.log_probs < 0).all() and (ours.entropy > 0).all()
    assert set(our_grads) == set(trl_grads) and any("lora_A" in n for n in our_grads)
    for name, grad in trl_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item(), msg=name)

    # calls without positions are TRL's own: generation-style logits and the boolean-index head
    assert lora_model(input_ids=inputs["input_ids"]).logits.shape[-1] == lora_model.config.vocab_size
    again = lora_model(**inputs, fused_lm_head=True)
    torch.testing.assert_close(again.log_probs, trl.log_probs)
    undo.close()
    assert base.forward is trl_forward  # undone: TRL's own forward again


def test_a_trained_head_goes_through_trls_kernel_and_gets_its_gradient(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    batch = LabelPositionsCollator(_collator())(copy.deepcopy(EXAMPLES))
    trl = model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"], fused_lm_head=True
    )
    with position_lm_head(model) as added:
        assert added and model.lm_head.weight.requires_grad  # e.g. modules_to_save=["lm_head"]
        ours = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            fused_lm_head=True,
            label_positions=batch["label_positions"],
            label_targets=batch["label_targets"],
        )
    torch.testing.assert_close(ours.log_probs, trl.log_probs[trl.label_mask], rtol=1e-5, atol=1e-6)
    ours.log_probs.sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    assert ours.log_probs.grad_fn.name().startswith("ChunkedLogProbFunction")


def test_models_whose_logits_trl_scales_keep_trls_head(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    add_fused_lm_head(model)
    model.config.logit_scale = 0.5  # e.g. Cohere: TRL multiplies before the soft-cap; ours does not
    forward = model.forward
    with position_lm_head(model) as added:
        assert not added
        assert model.forward == forward
