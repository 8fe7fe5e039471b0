"""Per-answer scores, chosen by the row's `source`, and corpus BLEU per group.

Every per-answer score lies in [0, 1] so the robustness metrics (CPS in particular) can combine them:
- `exact_match`: SQuAD-style normalised string equality (lowercase, no punctuation, no articles, single spaces).
- `rouge1`, `rougeL`: F1 from rouge-score with `score(reference, prediction)` (the reference goes first). rouge-score's
  default tokenizer keeps only `[a-z0-9]`, so "está" becomes "est" and Chinese or Cyrillic answers vanish; we pass a
  tokenizer that keeps every Unicode letter and digit and stems only ASCII words, as the default does.
- `sentence_bleu`: sacrebleu sentence BLEU / 100, only for per-answer spread. The headline BLEU is `corpus_bleu`
  (sacrebleu's 0-100 scale) over a whole group, computed by `corpus_bleu_by_group`.
- GSM8K (lm-eval-harness rules): `gsm8k_strict` reads the number after `#### `; `gsm8k_flexible` takes the last number
  in the text; both are compared with the reference's `#### ` number after dropping `,`, `$` and a trailing `.`.
- MMLU: `mmlu_letter` compares the chosen letter A-D with the reference's letter.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import defaultdict
from collections.abc import Iterable

import sacrebleu
from nltk.stem.porter import PorterStemmer  # the stemmer rouge-score itself uses
from rouge_score import rouge_scorer, tokenizers

# The score each source is judged by in the robustness tables (the others are reported alongside).
PRIMARY_METRIC = {"alpaca": "rougeL", "gsm8k": "gsm8k_flexible", "mmlu": "mmlu_letter"}
TEXT_METRICS = ("exact_match", "rouge1", "rougeL", "sentence_bleu")
SOURCE_METRICS = {"gsm8k": ("gsm8k_strict", "gsm8k_flexible"), "mmlu": ("mmlu_letter",)}
METRIC_LABELS = {
    "exact_match": "EM",
    "rouge1": "ROUGE-1",
    "rougeL": "ROUGE-L",
    "sentence_bleu": "sent. BLEU",
    "corpus_bleu": "BLEU",
    "gsm8k_strict": "GSM8K strict",
    "gsm8k_flexible": "GSM8K flexible",
    "mmlu_letter": "MMLU letter",
    "judge_task": "judge task score",
}


def primary_metric(source: str) -> str:
    return PRIMARY_METRIC.get(source, "rougeL")


def metrics_for(source: str) -> tuple[str, ...]:
    return TEXT_METRICS + SOURCE_METRICS.get(source, ())


# --- exact match -----------------------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


# --- ROUGE -----------------------------------------------------------------------------------------------------------
class UnicodeTokenizer(tokenizers.Tokenizer):
    """rouge-score's default tokenizer, but Unicode letters and digits survive (`\\w` instead of `[a-z0-9]`)."""

    _WORD = re.compile(r"[^\W_]+")

    def __init__(self, use_stemmer: bool = True):
        self._stemmer = PorterStemmer() if use_stemmer else None

    def tokenize(self, text: str) -> list[str]:
        tokens = self._WORD.findall(unicodedata.normalize("NFKC", text).lower())
        if self._stemmer is None:
            return tokens
        # Like the default: stem only words longer than 3 characters, and Porter only knows English (ASCII).
        return [self._stemmer.stem(t) if len(t) > 3 and t.isascii() else t for t in tokens]


_ROUGE = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True, tokenizer=UnicodeTokenizer())


def rouge_f1(prediction: str, reference: str) -> dict[str, float]:
    scores = _ROUGE.score(reference, prediction)  # target first
    return {"rouge1": scores["rouge1"].fmeasure, "rougeL": scores["rougeL"].fmeasure}


# --- BLEU ------------------------------------------------------------------------------------------------------------
def sentence_bleu(prediction: str, reference: str) -> float:
    return sacrebleu.sentence_bleu(prediction, [reference]).score / 100.0


def corpus_bleu(predictions: list[str], references: list[str]) -> float:
    """sacrebleu corpus BLEU (0-100) of one group: `corpus_bleu(hyps, [refs])`, one reference per hypothesis."""
    if not predictions:
        return float("nan")
    return sacrebleu.corpus_bleu(predictions, [references]).score


def corpus_bleu_by_group(rows: Iterable[dict], keys: tuple[str, ...]) -> dict[tuple, float]:
    """Corpus BLEU for each group of rows sharing `keys` (e.g. ("model", "source", "bucket"))."""
    groups: dict[tuple, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for row in rows:
        hyps, refs = groups[tuple(row[k] for k in keys)]
        hyps.append(row["generation"])
        refs.append(row["reference"])
    return {key: corpus_bleu(h, r) for key, (h, r) in sorted(groups.items())}


# --- GSM8K (lm-eval-harness gsm8k filters) ----------------------------------------------------------------------------
_GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_GSM8K_IGNORE = [re.compile(r","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$")]


def _clean_number(text: str) -> str:
    text = text.strip()
    for pattern in _GSM8K_IGNORE:
        text = pattern.sub("", text)
    return text.strip().lower()


def gsm8k_strict_answer(text: str) -> str | None:
    """The number after the first `#### ` (lm-eval's strict-match), or None."""
    match = _GSM8K_STRICT.search(text)
    return _clean_number(match.group(1)) if match else None


def gsm8k_flexible_answer(text: str) -> str | None:
    """The last number in the text (lm-eval's flexible-extract, group_select -1), or None."""
    matches = _GSM8K_FLEXIBLE.findall(text)
    if not matches:
        return None
    last = matches[-1]
    return _clean_number(last[0] or last[1]) or None


def gsm8k_reference_answer(reference: str) -> str | None:
    return gsm8k_strict_answer(reference) or gsm8k_flexible_answer(reference)


# --- MMLU ------------------------------------------------------------------------------------------------------------
_MMLU_PATTERNS = [
    re.compile(r"(?i:answer)(?:\s+(?i:is))?[\s:\-\(\*]*([ABCD])\b"),  # "The answer is (B)", "Answer: **C**"
    re.compile(r"^[\s\(\*]*([ABCD])(?:[\).:]|\s*$)"),  # a leading "B)", "(C)", "D." or just "A"
    re.compile(r"\(([ABCD])\)"),  # "(B)" anywhere
    re.compile(r"\b([ABCD])\b"),  # last resort: the first lone capital A-D
]


def mmlu_letter(text: str) -> str | None:
    """The chosen letter: 'answer is (B)' / 'Answer: B' first, then a leading 'B)', then '(B)', then a lone A-D."""
    for pattern in _MMLU_PATTERNS:
        match = pattern.search(text.strip())
        if match:
            return match.group(1).upper()
    return None


# --- one answer ------------------------------------------------------------------------------------------------------
def score_answer(prediction: str, reference: str, source: str) -> dict:
    """All per-answer scores for one generation, plus the extracted answer for GSM8K/MMLU."""
    scores = {
        "exact_match": exact_match(prediction, reference),
        **rouge_f1(prediction, reference),
        "sentence_bleu": sentence_bleu(prediction, reference),
    }
    if source == "gsm8k":
        gold = gsm8k_reference_answer(reference)
        strict, flexible = gsm8k_strict_answer(prediction), gsm8k_flexible_answer(prediction)
        scores["gsm8k_strict"] = float(gold is not None and strict == gold)
        scores["gsm8k_flexible"] = float(gold is not None and flexible == gold)
        scores["answer"] = flexible
    elif source == "mmlu":
        gold, chosen = mmlu_letter(reference), mmlu_letter(prediction)
        scores["mmlu_letter"] = float(gold is not None and chosen == gold)
        scores["answer"] = chosen
    return scores
