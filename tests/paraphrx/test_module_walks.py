"""The once-listed module walks: train/eval/zero_grad with Module's effect, and a trainer whose clipping and FLOP
count never walk the model per step."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM

from paraphrx.module_walks import cache_module_walks


@pytest.fixture()
def lora_model(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "up_proj"]))


def test_train_and_eval_set_every_module_as_module_train_does(lora_model):
    with cache_module_walks(lora_model) as trainable:
        assert trainable == [p for p in lora_model.parameters() if p.requires_grad] and len(trainable) == 2 * 2 * 2
        assert "train" in vars(lora_model) and "zero_grad" in vars(lora_model)  # per instance; classes untouched
        assert "train" not in vars(type(lora_model))
        lora_model.eval()
        assert not any(m.training for m in lora_model.modules())
        assert lora_model.train() is lora_model
        assert all(m.training for m in lora_model.modules())
        lora_model.train(False)
        assert not any(m.training for m in lora_model.modules())
        with pytest.raises(ValueError, match="boolean"):
            lora_model.train("yes")
    assert "train" not in vars(lora_model) and "zero_grad" not in vars(lora_model)  # undone: Module's own again


def test_dropout_follows_the_cached_train_and_eval(lora_model):
    for name, param in lora_model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(param, std=0.5)
    ids = torch.arange(10, 30)[None]
    with cache_module_walks(lora_model):
        lora_model.eval()
        a, b = lora_model(input_ids=ids).logits, lora_model(input_ids=ids).logits
        assert torch.equal(a, b)  # eval: LoRA dropout is off
        lora_model.train()
        c = lora_model(input_ids=ids).logits
        assert not torch.allclose(a, c)  # train: dropout is on again


def test_zero_grad_clears_the_trainable_gradients(lora_model):
    with cache_module_walks(lora_model) as trainable:
        lora_model(input_ids=torch.arange(10, 20)[None]).logits.sum().backward()
        assert all(p.grad is not None for p in trainable)
        lora_model.zero_grad(set_to_none=False)
        assert all(p.grad is not None and not p.grad.any() for p in trainable)
        lora_model.zero_grad()
        assert all(p.grad is None for p in lora_model.parameters())


def test_a_kernel_backed_model_keeps_its_own_train(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model._use_kernels = (
        True  # as set_use_kernels(True) leaves it: transformers re-applies hub kernels on a mode change
    )
    with cache_module_walks(model):
        assert "train" not in vars(model) and "zero_grad" in vars(model)
