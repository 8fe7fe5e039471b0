"""Generation cache: one JSONL file per model identity, one line per answered prompt.

The key of a file is a hash of what decides a greedy answer: the base model (Hub id + the commit the HF cache
resolves its revision to after loading, so the first run and later ones agree; or the sha256 of a local folder's
weights), the adapter (sha256 of its weights and config), how the base was loaded
(dtype, 4-bit, attention, merged or not) and the generation settings. Inside, answers are keyed by the prompt's
sha256. So a re-run generates only what is new, and a changed adapter or setting never reuses stale text.
Batch size is not part of the key: greedy text should not depend on it (in bf16 it rarely can; see docs/evaluation.md).
Lines are appended after every batch, so an interrupted run keeps its progress; a torn last line is skipped.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from loguru import logger

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()


def base_identity(model_name_or_path: str, revision: str | None) -> dict:
    """A local folder is identified by its weights' hash; a Hub id by the commit the local HF cache resolves
    `revision` to, or `"commit": None` while the model has never been downloaded (see `loaded_base_identity`)."""
    local = Path(model_name_or_path)
    if local.is_dir():
        files = [p for p in local.iterdir() if p.suffix in WEIGHT_SUFFIXES] + [local / "config.json"]
        return {"base": str(local), "sha256": sha256_files([p for p in files if p.exists()])}
    return {"base": model_name_or_path, "commit": cached_commit(model_name_or_path, revision)}


def loaded_base_identity(model_name_or_path: str, revision: str | None) -> dict:
    """The identity once `from_pretrained` has run: the download recorded `revision` -> commit in the HF cache,
    so a Hub id resolves to the same commit the next run finds before loading anything. (transformers 5 keeps
    no `config._commit_hash`; the cache is the record.) A commit that still cannot be resolved (a custom cache
    folder) falls back to the revision name, the same on every run."""
    identity = base_identity(model_name_or_path, revision)
    if "commit" in identity and identity["commit"] is None:
        identity["commit"] = revision or "main"
    return identity


def cached_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit `revision` points to in the local HF cache (offline), or None when it is not there."""
    if revision and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision  # already a commit
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # not a valid repo id, unreadable cache: nothing resolved
        return None
    # `<cache>/models--org--name/snapshots/<commit>/config.json`; otherwise None or the "known missing" marker.
    return Path(path).parent.name if isinstance(path, str) else None


def adapter_identity(adapter_dir: Path) -> dict:
    files = [p for p in adapter_dir.iterdir() if p.name.startswith("adapter_") and p.is_file()]
    return {"adapter": adapter_dir.name, "sha256": sha256_files(files)}


def cache_key(identity: dict) -> str:
    return sha256_text(json.dumps(identity, sort_keys=True))[:24]


class GenerationCache:
    """Answers of one model identity, stored in `<cache_dir>/<key>.jsonl` with the identity in `<key>.json`."""

    def __init__(self, cache_dir: str | Path, identity: dict):
        self.identity = identity
        self.key = cache_key(identity)
        self.dir = Path(cache_dir)
        self.path = self.dir / f"{self.key}.jsonl"
        self._torn_tail = False
        self._answers = self._read()

    def _read(self) -> dict[str, str]:
        answers: dict[str, str] = {}
        if not self.path.exists():
            return answers
        # A torn last line has no newline: start the next append on a fresh line so only that line is lost.
        with self.path.open("rb") as raw:
            raw.seek(0, 2)
            if raw.tell():
                raw.seek(-1, 2)
                self._torn_tail = raw.read(1) != b"\n"
        with self.path.open(encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                try:
                    entry = json.loads(line)
                    answers[entry["prompt_sha256"]] = entry["generation"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    logger.warning("{}:{}: unreadable cache line skipped (interrupted write?)", self.path, line_no)
        return answers

    def get(self, prompt: str) -> str | None:
        return self._answers.get(sha256_text(prompt))

    def missing(self, prompts: list[str]) -> list[str]:
        """The prompts without a cached answer, each once, in first-seen order."""
        return list(dict.fromkeys(p for p in prompts if sha256_text(p) not in self._answers))

    def add(self, prompts: list[str], generations: list[str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        identity_file = self.dir / f"{self.key}.json"
        if not identity_file.exists():
            tmp = identity_file.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.identity, indent=2, sort_keys=True), encoding="utf-8")
            tmp.replace(identity_file)
        with self.path.open("a", encoding="utf-8") as handle:
            if self._torn_tail:
                handle.write("\n")
                self._torn_tail = False
            for prompt, text in zip(prompts, generations):
                sha = sha256_text(prompt)
                self._answers[sha] = text
                handle.write(json.dumps({"prompt_sha256": sha, "generation": text}, ensure_ascii=False) + "\n")
            handle.flush()
