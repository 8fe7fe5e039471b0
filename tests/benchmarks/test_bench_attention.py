"""benchmarks/bench_attention.py's packed batch: the training batch's documents, and a pad tail that joins none."""

import torch

from benchmarks.bench_attention import packed_document_ids
from benchmarks.bench_train import EXAMPLES_PER_STEP, synthetic_examples


def test_packed_document_ids_follow_the_synthetic_lengths_and_pads_stand_alone():
    lengths = [len(r["input_ids"]) for r in synthetic_examples(EXAMPLES_PER_STEP, vocab=1000)]
    ids = packed_document_ids()
    assert ids.numel() == sum(lengths)
    assert torch.equal(torch.bincount(ids), torch.tensor(lengths))  # one id per example, in order, its length long
    padded = packed_document_ids(sum(lengths) + 5)
    assert torch.equal(padded[: sum(lengths)], ids)
    assert padded[-5:].tolist() == list(range(EXAMPLES_PER_STEP, EXAMPLES_PER_STEP + 5))  # each pad its own document
    assert torch.equal(packed_document_ids(100), ids[:100])
