"""Evaluation of the base model and the LoRA adapters on held-out paraphrases (`evaluate_paraphrx.py`).

generation: batched greedy answers; metrics: per-answer scores; robustness: spread across paraphrases;
cache: generations keyed by model identity; report: results folder; pipeline: the run that ties them together.
"""
