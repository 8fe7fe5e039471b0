"""The evaluation loss on the fast path: many rows per forward, no padding, no gradient, weighted by token.

transformers' `Trainer.evaluation_loop` scores `per_device_eval_batch_size` rows per forward (4 in the recipes) and
reports the mean of the batches' own mean losses, every batch weighted alike: the number moves with the batch size
and with which rows happen to share a batch. `packed_evaluation` replaces that loop on one trainer:
- the evaluation rows (SFTTrainer's tokenized rows, cut as the training rows are: `prepare_rows`) are packed in
  dataset order into padding-free batches of at most `tokens_per_batch` tokens, collated by the trainer's own
  collator (so the trained positions are the training step's);
- each batch goes through the same model as a training step (compiled decoder layers, flex attention keeping the
  rows apart) under `no_grad`, and only the completion positions go through the LM head, forward only
  (completion_positions.position_lm_head with lm_head.log_probs_forward_only), or through TRL's fused head;
- `eval_loss` = the sum of the negative log-likelihoods of every completion token of every row / the number of those
  tokens, the same for any batch size (it is also how a training step's loss weighs its rows);
  `eval_mean_token_accuracy` and `eval_entropy` are token-weighted likewise.
`Trainer.evaluate` still runs around it: the log line with eval_perplexity, the callbacks (early stopping) and the
best-model tracking by `eval_loss` are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from transformers.trainer_utils import EvalLoopOutput

from paraphrx import library_internals as internals
from paraphrx.completion_positions import POSITIONS, TARGETS
from paraphrx.patches import patch_attribute

# Tokens per evaluation forward: ~70 rows of the recipes' data (a training step's batch is 16 rows, ~3.6k tokens).
# Without a gradient nothing per layer is kept, so memory stays small: the LM head's tile is the largest buffer.
EVAL_TOKENS_PER_BATCH = 16_384
# What the collator reads from a tokenized row (SFTTrainer's prepared columns).
_ROW_COLUMNS = ("input_ids", "labels", "completion_mask", "assistant_masks", "seq_lengths")


def token_lengths(dataset) -> list[int]:
    """The number of tokens of each tokenized row, read from Arrow without building the rows in Python."""
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.with_format("arrow")["input_ids"]).to_pylist()


def pack_rows(lengths: list[int], tokens_per_batch: int) -> list[range]:
    """Consecutive rows in batches of at most `tokens_per_batch` tokens (a longer row is a batch of its own)."""
    batches, start, used = [], 0, 0
    for index, length in enumerate(lengths):
        if index > start and used + length > tokens_per_batch:
            batches.append(range(start, index))
            start, used = index, 0
        used += length
    if start < len(lengths):
        batches.append(range(start, len(lengths)))
    return batches


class PackedEvalBatches:
    """A tokenized evaluation set as padding-free batches of at most `tokens_per_batch` tokens, collated by
    `collator`; `shard` (index, count) keeps every count-th batch for one process of a multi-GPU run. Iterable any
    number of times, like a DataLoader, and it has the `dataset` Trainer reads from one. With `keep`, the collated
    batches of the first full pass are kept and replayed (the evaluation subset, scored every `eval_steps`)."""

    def __init__(
        self,
        dataset,
        collator,
        tokens_per_batch: int = EVAL_TOKENS_PER_BATCH,
        shard: tuple[int, int] = (0, 1),
        keep: bool = False,
    ):
        self.dataset = dataset.select_columns([c for c in _ROW_COLUMNS if c in dataset.column_names])
        self.batches = pack_rows(token_lengths(self.dataset), tokens_per_batch)[shard[0] :: shard[1]]
        self.collator = collator
        self.keep = keep
        self._kept: list[dict] | None = None

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict]:
        if self._kept is not None:
            yield from self._kept
            return
        collated = []
        for rows in self.batches:
            columns = self.dataset[rows.start : rows.stop]
            batch = self.collator([dict(zip(columns, values)) for values in zip(*columns.values())])
            collated.append(batch)
            yield batch
        if self.keep:  # only a complete pass
            self._kept = collated


def _to_device(batch: dict, device: torch.device) -> dict:
    if device.type != "cuda":
        return {key: value.to(device) for key, value in batch.items() if isinstance(value, torch.Tensor)}
    return {
        key: value.pin_memory().to(device, non_blocking=True)
        for key, value in batch.items()
        if isinstance(value, torch.Tensor)
    }


def token_sums(model, batches, device: torch.device) -> torch.Tensor:
    """[negative log-likelihood, entropy, top-1 hits, tokens] summed over the completion tokens of every batch, as
    float64 on `device` (read once by the caller: nothing here waits for the GPU)."""
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    with torch.no_grad():
        for batch in batches:
            batch = _to_device(batch, device)
            inputs = {
                "input_ids": batch["input_ids"],
                "position_ids": batch["position_ids"],
                "use_cache": False,
                "fused_lm_head": True,
            }
            if POSITIONS in batch:  # the trained positions from the collator: the position LM head scores only those
                outputs = model(**inputs, label_positions=batch[POSITIONS], label_targets=batch[TARGETS])
                tokens = batch[POSITIONS].numel()
            else:  # TRL's fused head: zeros where the label is -100
                outputs = model(**inputs, labels=batch["labels"])
                tokens = outputs.label_mask.sum()
            sums += torch.stack(
                [
                    -outputs.log_probs.double().sum(),
                    outputs.entropy.double().sum(),
                    outputs.is_top1.double().sum(),
                    torch.as_tensor(tokens, device=device).double(),
                ]
            )
    return sums


@contextmanager
def packed_evaluation(
    trainer, prepare_rows: Callable | None = None, tokens_per_batch: int = EVAL_TOKENS_PER_BATCH
) -> Iterator[None]:
    """The trainer evaluates through `token_sums` (until the context ends): its `get_eval_dataloader` packs the
    evaluation rows (after `prepare_rows`, e.g. the training rows' cut) and its `evaluation_loop` scores them. A
    trainer with `compute_metrics` (which needs the logits) or a `predict` call keep transformers' own loop."""
    own_dataloader, own_loop = trainer.get_eval_dataloader, trainer.evaluation_loop
    # The trainer's own evaluation set(s), scored every `eval_steps`: cut, packed and collated once. Keyed by name
    # (None: the one set), kept with the dataset object it was built from, so a replaced set (or collator) is packed
    # anew.
    packed: dict[str | None, tuple[object, PackedEvalBatches]] = {}

    def get_eval_dataloader(eval_dataset=None):
        if trainer.compute_metrics is not None:
            return own_dataloader(eval_dataset)
        name = eval_dataset if isinstance(eval_dataset, str) else None
        dataset = trainer.eval_dataset[name] if name is not None else eval_dataset
        dataset = trainer.eval_dataset if dataset is None else dataset
        own = dataset is (trainer.eval_dataset[name] if name is not None else trainer.eval_dataset)
        if own and name in packed and packed[name][0] is dataset and packed[name][1].collator is trainer.data_collator:
            return packed[name][1]
        source = dataset
        if prepare_rows is not None:
            dataset = prepare_rows(dataset)
        state = trainer.accelerator.state
        batches = PackedEvalBatches(
            dataset,
            trainer.data_collator,
            tokens_per_batch,
            shard=(state.process_index, state.num_processes),
            keep=own,
        )
        if own:
            packed[name] = (source, batches)
        return batches

    def evaluation_loop(dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        if not isinstance(dataloader, PackedEvalBatches):
            return own_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        model = trainer.model
        model.eval()
        device = next(p.device for p in model.parameters())
        sums = trainer.accelerator.reduce(token_sums(model, dataloader, device), reduction="sum")
        nll, entropy, hits, tokens = sums.tolist()  # the one read of the evaluation
        tokens = max(tokens, 1.0)
        metrics = internals.step_metrics(trainer)["eval"]  # TRL's log adds them as eval_entropy, ...
        metrics["entropy"], metrics["mean_token_accuracy"] = [entropy / tokens], [hits / tokens]
        metrics["num_tokens"] = [internals.train_tokens(trainer)]
        return EvalLoopOutput(
            predictions=None,
            label_ids=None,
            metrics={f"{metric_key_prefix}_loss": nll / tokens},
            num_samples=len(dataloader.dataset),
        )

    with ExitStack() as undo:
        undo.enter_context(patch_attribute(trainer, "get_eval_dataloader", get_eval_dataloader))
        undo.enter_context(patch_attribute(trainer, "evaluation_loop", evaluation_loop))
        yield
