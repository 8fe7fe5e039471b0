"""The fast path's evaluation loss (packed_evaluation.py) on the CPU: the token-weighted mean of the unpacked eager
reference, whatever the batch size, with rows cut like training rows; transformers' loop is back afterwards."""

import math
from contextlib import ExitStack

import pytest
import torch

from paraphrx.completion_positions import score_collated_positions
from paraphrx.dataset_io import load_prepared
from paraphrx.fast_path import truncate_tokenized
from paraphrx.modeling import load_model_and_tokenizer
from paraphrx.packed_evaluation import PackedEvalBatches, pack_rows, packed_evaluation
from paraphrx.recipe_cli import parse_recipe
from paraphrx.trainer_factory import build_trainer
from tests.conftest import tiny_recipe


def _trainer(model_dir, data_dir, out, *overrides, eval_rows=16):
    """The tiny recipe in float32 without quantization (so comparisons are exact to rounding), padding-free batches as
    on the fast path, a model whose logits are peaked (random weights alone give every token a loss near log V) and
    non-zero LoRA B, so the adapters take part."""
    paths = ["--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir), "--output_dir", str(out)]
    settings = (
        "--load_in_4bit false --dtype float32 --padding_free true --max_length None --lora_dropout 0 "
        "--eval_strategy no --load_best_model_at_end false --early_stopping_patience None "
        "--per_device_eval_batch_size 3 --gradient_checkpointing false"
    )
    script_args, training_args, model_args = parse_recipe(
        [tiny_recipe("bucket1-2"), *paths, *settings.split(), *overrides]
    )
    model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(6)  # tied: peaked logits, so the final soft-cap (30) bites
    train = load_prepared(str(data_dir), "bucket1_2").select(range(8))
    validation = load_prepared(str(data_dir), "validation").shuffle(seed=0).select(range(eval_rows))
    trainer = build_trainer(model, tokenizer, training_args, model_args, train, validation)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return trainer


def _reference(model, rows) -> dict[str, float]:
    """Each row alone, unpacked, through the model's plain forward (eager attention, full logits, final soft-cap):
    summed over every completion token of every row, float64."""
    nll = entropy = hits = tokens = 0.0
    model.eval()
    with torch.no_grad():
        for row in rows:
            labels = torch.tensor(row["labels"][1:])
            logits = model(input_ids=torch.tensor([row["input_ids"]]), use_cache=False).logits[0, :-1].double()
            trained = labels != -100
            log_p = logits[trained].log_softmax(-1)
            nll -= log_p.gather(1, labels[trained][:, None]).sum().item()
            entropy -= (log_p.exp() * log_p).sum().item()
            hits += (logits[trained].argmax(-1) == labels[trained]).sum().item()
            tokens += trained.sum().item()
    return {"loss": nll / tokens, "entropy": entropy / tokens, "accuracy": hits / tokens, "tokens": tokens}


@pytest.fixture(scope="module")
def trainer(tiny_model_dir, prepared_dataset_dir, tmp_path_factory):
    return _trainer(tiny_model_dir, prepared_dataset_dir, tmp_path_factory.mktemp("packed-eval"))


@pytest.mark.parametrize("positions", [True, False], ids=["collator-positions", "trl-fused-head"])
def test_eval_loss_is_the_token_weighted_mean_of_the_unpacked_reference(trainer, positions):
    reference = _reference(trainer.model, trainer.eval_dataset)
    with ExitStack() as undo:
        if positions:  # the fast path's LM head: only the collator's trained positions, forward only
            assert undo.enter_context(score_collated_positions(trainer))
        undo.enter_context(packed_evaluation(trainer, tokens_per_batch=600))
        metrics = trainer.evaluate()
    assert math.isclose(metrics["eval_loss"], reference["loss"], rel_tol=1e-5)
    assert math.isclose(metrics["eval_perplexity"], math.exp(reference["loss"]), rel_tol=1e-5)
    assert math.isclose(metrics["eval_entropy"], reference["entropy"], rel_tol=1e-4)
    assert metrics["eval_mean_token_accuracy"] == pytest.approx(reference["accuracy"], abs=1e-9)
    vocab = trainer.model.config.vocab_size  # a model whose tokens' losses differ, not a uniform guess
    assert 0 < reference["accuracy"] < 1 and abs(reference["loss"] - math.log(vocab)) > 0.2
    assert metrics["eval_samples_per_second"] > 0 and "eval_runtime" in metrics  # Trainer.evaluate still around it


def test_eval_loss_does_not_depend_on_the_batch_size(trainer):
    """Packed: one number for any token budget. transformers' own loop averages the batches' means, so its number
    moves with per_device_eval_batch_size (the control: this comparison can fail)."""
    losses, forwards = {}, {}
    for budget in (150, 700, 10**6):
        with packed_evaluation(trainer, tokens_per_batch=budget):
            losses[budget] = trainer.evaluate()["eval_loss"]
            forwards[budget] = len(trainer.get_eval_dataloader())
    assert forwards[150] > forwards[700] > forwards[10**6] == 1
    assert max(losses.values()) - min(losses.values()) < 1e-6 * losses[700]
    plain = {}
    for rows in (1, 5):
        trainer.args.per_device_eval_batch_size = rows
        plain[rows] = trainer.evaluate()["eval_loss"]
    trainer.args.per_device_eval_batch_size = 3
    assert abs(plain[1] - plain[5]) > 1e-3 and abs(plain[1] - losses[700]) > 1e-3


def test_a_dataset_passed_to_evaluate_is_prepared_and_cut_like_the_training_rows(trainer, prepared_dataset_dir):
    """The end-of-run evaluation passes the raw validation split: SFTTrainer tokenizes it, the fast path cuts it at
    max_length (TRL's own cut is off on the fast path) and drops rows left with nothing to train."""
    raw = load_prepared(str(prepared_dataset_dir), "validation").shuffle(seed=1).select(range(30))
    tokenized = trainer._prepare_dataset(raw, trainer.processing_class, trainer.args, False, None, "reference")
    prompts = sorted(next(i for i, label in enumerate(row) if label != -100) for row in tokenized["labels"])
    cut = prompts[len(prompts) // 4] + 2  # a quarter of the prompts fill it; the other rows keep a completion token
    with packed_evaluation(trainer, prepare_rows=lambda rows: truncate_tokenized(rows, cut)):
        metrics = trainer.evaluate(eval_dataset=raw, metric_key_prefix="eval_full")
    expected = truncate_tokenized(tokenized, cut)
    assert 0 < len(expected) < len(raw) and max(len(ids) for ids in expected["input_ids"]) == cut  # cut and dropped
    assert math.isclose(metrics["eval_full_loss"], _reference(trainer.model, expected)["loss"], rel_tol=1e-5)


def test_the_evaluation_set_is_packed_and_collated_once(trainer, prepared_dataset_dir, monkeypatch):
    """The set scored every `eval_steps` is cut, packed and collated at its first evaluation only (the same batches
    and loss after); a dataset passed to `evaluate` (the end-of-run split) is packed every time and not kept; a
    replaced set is packed anew."""
    collated = []
    collator = trainer.data_collator
    monkeypatch.setattr(trainer, "data_collator", lambda rows: collated.append(len(rows)) or collator(rows))
    raw = load_prepared(str(prepared_dataset_dir), "validation").select(range(6))
    with packed_evaluation(trainer, tokens_per_batch=300):
        first = trainer.evaluate()["eval_loss"]
        once = len(collated)
        assert trainer.get_eval_dataloader() is trainer.get_eval_dataloader()
        assert trainer.evaluate()["eval_loss"] == first and len(collated) == once > 1
        trainer.evaluate(eval_dataset=raw, metric_key_prefix="eval_full")
        passed = len(collated) - once
        trainer.evaluate(eval_dataset=raw, metric_key_prefix="eval_full")
        assert len(collated) - once == 2 * passed > 0
        assert sum(collated[:once]) == len(trainer.eval_dataset)
        before = len(collated)
        monkeypatch.setattr(trainer, "eval_dataset", trainer.eval_dataset.select(range(len(trainer.eval_dataset) - 1)))
        trainer.evaluate()  # a replaced set is packed anew, and kept in its turn
        assert sum(collated[before:]) == len(trainer.eval_dataset)
        trainer.evaluate()
        assert sum(collated[before:]) == len(trainer.eval_dataset)


def test_evaluation_in_training_keeps_the_best_adapter_by_eval_loss(tiny_model_dir, prepared_dataset_dir, tmp_path):
    schedule = "--eval_strategy steps --eval_steps 2 --save_steps 2 --max_steps 4 --load_best_model_at_end true"
    trainer = _trainer(
        tiny_model_dir,
        prepared_dataset_dir,
        tmp_path / "out",
        *schedule.split(),
        "--learning_rate",
        "3e-2",
        eval_rows=8,
    )
    with packed_evaluation(trainer):
        trainer.train()
        final = trainer.evaluate()["eval_loss"]
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [2, 4, 4]
    assert all({"eval_perplexity", "eval_entropy", "eval_mean_token_accuracy"} <= h.keys() for h in evals)
    best = min(evals[:2], key=lambda h: h["eval_loss"])
    assert trainer.state.best_metric == best["eval_loss"] and trainer.state.best_global_step == best["step"]
    assert math.isclose(final, best["eval_loss"], rel_tol=1e-6)  # the best adapter was loaded back at the end


def test_the_trainers_own_loop_is_back_when_the_context_ends(trainer):
    with packed_evaluation(trainer):
        assert isinstance(trainer.get_eval_dataloader(), PackedEvalBatches)
        assert {"get_eval_dataloader", "evaluation_loop"} <= vars(trainer).keys()
    assert not {"get_eval_dataloader", "evaluation_loop"} & vars(trainer).keys()
    assert not isinstance(trainer.get_eval_dataloader(), PackedEvalBatches)


def test_pack_rows_and_shards_cover_every_row_once(trainer):
    assert pack_rows([5, 5, 5, 20, 1, 1], 10) == [range(0, 2), range(2, 3), range(3, 4), range(4, 6)]
    assert pack_rows([], 10) == []
    batches = PackedEvalBatches(trainer.eval_dataset, trainer.data_collator, tokens_per_batch=300)
    shards = [PackedEvalBatches(trainer.eval_dataset, trainer.data_collator, 300, shard=(i, 2)) for i in range(2)]
    assert len(batches) > 2 and sum(len(s) for s in shards) == len(batches)
    rows = sorted(r for shard in shards for batch in shard.batches for r in batch)
    assert rows == list(range(len(trainer.eval_dataset)))
    lengths = [len(ids) for ids in trainer.eval_dataset["input_ids"]]
    for batch, rows in zip(batches, batches.batches):  # padding-free: one row of exactly these rows' tokens
        assert batch["input_ids"].shape == (1, sum(lengths[r] for r in rows))
        assert (batch["position_ids"][0] == 0).sum() == len(rows)
