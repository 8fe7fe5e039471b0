"""The run folder's model card: what made the adapter and how to use it, with Hub links only for Hub repos."""

from types import SimpleNamespace

import pytest
import yaml

from paraphrx.model_card import render_model_card

RECIPE = {
    "run_name": "bucket1-4",
    "model_name_or_path": "google/gemma-2-2b-it",
    "model_revision": "main",
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "use_bnb_nested_quant": True,
    "dtype": "bfloat16",
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": ["v_proj", "q_proj", "o_proj", "k_proj", "up_proj", "gate_proj", "down_proj"],
    "optim": "adamw_torch",
    "learning_rate": 2e-4,
    "lr_scheduler_type": "cosine",
    "seed": 42,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 4,
    "load_best_model_at_end": True,
}
RECORD = {
    "dataset": "me/paraphrx-alpaca",
    "revision": "v1",
    "card_sha256": "ab" * 32,
    "train_split": "bucket1_4",
    "train_rows": 1876,
    "eval_split": "validation",
    "eval_buckets": [1, 2, 3, 4],
    "eval_rows": 268,
}
STATE = SimpleNamespace(global_step=240, epoch=3.0, best_metric=1.23456, best_global_step=220)


def _header(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def test_a_hub_run_links_its_base_and_dataset_and_says_how_to_load_and_serve_it():
    card = render_model_card(
        RECIPE, RECORD, STATE, location="me/bucket1-4", command="python train_sft.py recipes/bucket1-4.yaml"
    )
    header = _header(card)
    assert header["base_model"] == "google/gemma-2-2b-it" and header["datasets"] == ["me/paraphrx-alpaca"]
    assert header["library_name"] == "peft" and {"paraphrx", "lora", "qlora"} <= set(header["tags"])
    for expected in (
        "| base model | [`google/gemma-2-2b-it`](https://huggingface.co/google/gemma-2-2b-it) revision `main`, "
        "loaded in 4-bit nf4 with double quantisation, compute in bfloat16 |",
        "| dataset | [`me/paraphrx-alpaca`](https://huggingface.co/datasets/me/paraphrx-alpaca) revision `v1`",
        "| train split | `bucket1_4`: 1,876 rows |",
        "| eval split | `validation`, buckets 1-4: 268 rows |",
        "| LoRA | r=16, alpha=32, dropout 0.05, on down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj |",
        "| steps | 240 optimizer steps, 3 epochs |",
        "| best eval_loss | 1.2346 at step 220 (the adapter kept) |",
        "| command | `python train_sft.py recipes/bucket1-4.yaml` |",
        'AutoPeftModelForCausalLM.from_pretrained("me/bucket1-4"',
        "vllm serve google/gemma-2-2b-it --enable-lora --max-lora-rank 16 --lora-modules bucket1-4=me/bucket1-4",
    ):
        assert expected in card, expected


@pytest.fixture
def local_folders(tmp_path, monkeypatch):
    (tmp_path / "models" / "tiny-gemma2").mkdir(parents=True)
    (tmp_path / "data" / "paraphrx-alpaca").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)


def test_a_local_base_and_dataset_are_named_never_linked_as_hub_repos(local_folders):
    recipe = {**RECIPE, "model_name_or_path": "models/tiny-gemma2", "lora_r": 20}
    record = {**RECORD, "dataset": "data/paraphrx-alpaca", "revision": None, "eval_buckets": [1]}
    card = render_model_card(recipe, record, STATE, location="outputs/bucket1-4")
    header = _header(card)
    assert "base_model" not in header and "datasets" not in header  # the Hub checks these as repo ids
    assert "None" not in card and "huggingface.co/datasets/data" not in card and "huggingface.co/models" not in card
    assert "| base model | `models/tiny-gemma2` (a local folder), loaded in" in card  # no revision for a folder
    assert "| eval split | `validation`, bucket 1: 268 rows |" in card and "| command |" not in card
    assert "--max-lora-rank 32 --lora-modules bucket1-4=outputs/bucket1-4" in card  # vLLM takes 8, 16, 32, ...


def test_the_evaluation_subset_and_the_whole_validation_split_are_named():
    record = {**RECORD, "eval_rows": 64, "full_eval_rows": 2788}
    state = SimpleNamespace(
        **vars(STATE),
        log_history=[{"eval_loss": 1.3, "step": 220}, {"eval_full_loss": 1.28761, "eval_full_perplexity": 3.624}],
    )
    card = render_model_card(RECIPE, record, state, location="me/bucket1-4")
    assert "buckets 1-4: 64 of its 2,788 rows (a fixed subset, `eval_subset_rows`) every evaluation" in card
    assert "| whole validation split | 2,788 rows, once at the end, the adapter of step 220: loss 1.2876" in card
    assert "whole validation split" not in render_model_card(RECIPE, RECORD, STATE, location="me/bucket1-4")
