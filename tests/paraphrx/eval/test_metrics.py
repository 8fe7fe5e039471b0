"""Per-answer metrics on hand-computed cases."""

import math

import pytest
from rouge_score import rouge_scorer

from paraphrx.eval import metrics as m


def test_normalize_and_exact_match():
    assert m.normalize_answer("  The Cat,  sat!\n") == "cat sat"
    assert m.exact_match("An apple.", "apple") == 1.0
    assert m.exact_match("apples", "apple") == 0.0


def test_rouge_reference_first_and_hand_computed_f1():
    # prediction drops "sat": 5 of its 5 tokens match, 5 of the reference's 6 -> F1 = 2*1*(5/6)/(1+5/6) = 10/11
    scores = m.rouge_f1(prediction="the cat on the mat", reference="the cat sat on the mat")
    assert scores["rouge1"] == pytest.approx(10 / 11)
    assert scores["rougeL"] == pytest.approx(10 / 11)
    # Stemming as rouge-score does it: "cats" and "cat" match.
    assert m.rouge_f1("cats", "cat")["rouge1"] == 1.0


def test_rouge_keeps_non_latin_text_that_the_default_tokenizer_drops():
    default = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    assert default.score("你好 世界", "你好 世界")["rouge1"].fmeasure == 0.0  # the upstream blind spot
    assert m.rouge_f1("你好 世界", "你好 世界")["rouge1"] == 1.0
    assert m.rouge_f1("你好 朋友", "你好 世界")["rouge1"] == pytest.approx(0.5)
    assert m.UnicodeTokenizer().tokenize("Está BIEN, señor") == ["está", "bien", "señor"]


def test_bleu_hand_computed():
    # n-gram precisions 4/5, 3/4, 2/3, 1/2, equal lengths (no brevity penalty): BLEU = (0.2) ** (1/4)
    expected = 100 * 0.2**0.25
    assert m.corpus_bleu(["a b c d e"], ["a b c d f"]) == pytest.approx(expected, abs=0.01)
    assert m.sentence_bleu("a b c d e", "a b c d f") == pytest.approx(expected / 100, abs=1e-4)
    assert m.corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100)
    assert math.isnan(m.corpus_bleu([], []))


def test_corpus_bleu_by_group_pools_each_group():
    rows = [
        {"model": "x", "bucket": 1, "generation": "a b c d e", "reference": "a b c d e"},
        {"model": "x", "bucket": 2, "generation": "a b c d e", "reference": "a b c d f"},
        {"model": "y", "bucket": 1, "generation": "q r s t", "reference": "a b c d"},
    ]
    bleu = m.corpus_bleu_by_group(rows, ("model", "bucket"))
    assert set(bleu) == {("x", 1), ("x", 2), ("y", 1)}
    assert bleu[("x", 1)] == pytest.approx(100)
    assert bleu[("x", 2)] == pytest.approx(100 * 0.2**0.25, abs=0.01)
    assert bleu[("y", 1)] == 0.0


@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        ("48 + 24 = 72 clips.\n#### 72", "72", "72"),
        ("so the total is #### 1,234.", "1234", "1234"),
        ("It costs $1,234.50 in all, then 7 more", None, "7"),
        ("The change is -5 degrees.", None, "-5"),
        ("no digits here", None, None),
    ],
)
def test_gsm8k_extraction_follows_lm_eval_harness(text, strict, flexible):
    assert m.gsm8k_strict_answer(text) == strict
    assert m.gsm8k_flexible_answer(text) == flexible


def test_gsm8k_scores_against_the_reference_number():
    reference = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    scores = m.score_answer("She sold 48 + 24 = 72 clips altogether.", reference, "gsm8k")
    assert scores["gsm8k_flexible"] == 1.0 and scores["gsm8k_strict"] == 0.0 and scores["answer"] == "72"
    scores = m.score_answer("#### 72", reference, "gsm8k")
    assert scores["gsm8k_strict"] == 1.0
    assert m.score_answer("72 ... or 73", reference, "gsm8k")["gsm8k_flexible"] == 0.0


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("The answer is (B) because", "B"),
        ("Answer: **C**", "C"),
        ("D) Paris", "D"),
        ("A", "A"),
        ("I think it is (C), not D.", "C"),
        ("Probably B.", "B"),
        ("none of them", None),
    ],
)
def test_mmlu_letter(text, letter):
    assert m.mmlu_letter(text) == letter


def test_score_answer_picks_metrics_by_source():
    assert set(m.score_answer("x", "x", "alpaca")) == {"exact_match", "rouge1", "rougeL", "sentence_bleu"}
    mmlu = m.score_answer("The answer is B", "B", "mmlu")
    assert mmlu["mmlu_letter"] == 1.0 and mmlu["answer"] == "B" and mmlu["exact_match"] == 0.0
    assert m.score_answer("C", "B", "mmlu")["mmlu_letter"] == 0.0
    assert m.primary_metric("gsm8k") == "gsm8k_flexible" and m.primary_metric("alpaca") == "rougeL"
