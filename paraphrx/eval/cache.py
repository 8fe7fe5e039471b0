"""Generation cache: one JSONL file per model identity, one line per answered prompt.

The key of a file is a hash of what decides a greedy answer: the base model (Hub id + the commit the HF cache
resolves its revision to after loading, so the first run and later ones agree; or the sha256 of a local folder's
weights), the adapter (sha256 of its weights and config), how the base was loaded
(dtype, 4-bit, attention, merged or not) and the generation settings. Inside, answers are keyed by the prompt's
sha256. So a re-run generates only what is new, and a changed adapter or setting never reuses stale text.
Batch size is not part of the key: greedy text should not depend on it (in bf16 it rarely can; see docs/evaluation.md).
Lines are appended after every batch, so an interrupted run keeps its progress; a torn or corrupt line (cut inside
a character, not JSON, wrong types) is skipped and its prompt answered again, never fatal.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from loguru import logger

from paraphrx.atomic_folder import write_text_atomic

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
        """Every readable line; a torn or corrupt one (cut inside a character, not JSON, wrong types) is skipped, so
        its prompt is answered again."""
        answers: dict[str, str] = {}
        if not self.path.exists():
            return answers
        with self.path.open("rb") as handle:
            for line_no, line in enumerate(handle, 1):
                # A torn last line has no newline: the next append starts on a fresh line, so only that one is lost.
                self._torn_tail = not line.endswith(b"\n")
                entry = _cache_entry(line)
                if entry is None:
                    logger.warning("{}:{}: unreadable cache line skipped (interrupted write?)", self.path, line_no)
                else:
                    answers[entry[0]] = entry[1]
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
            write_text_atomic(identity_file, json.dumps(self.identity, indent=2, sort_keys=True))
        lines = ["\n"] if self._torn_tail else []
        for prompt, text in zip(prompts, generations):
            sha = sha256_text(prompt)
            self._answers[sha] = text
            lines.append(json.dumps({"prompt_sha256": sha, "generation": text}, ensure_ascii=False) + "\n")
        with self.path.open("ab") as handle:  # one write per batch: an appending neighbour cannot split a line
            handle.write("".join(lines).encode("utf-8"))
        self._torn_tail = False


def _cache_entry(line: bytes) -> tuple[str, str] | None:
    """(prompt sha256, generation) of one cache line, or None when the line is not one we wrote."""
    try:
        entry = json.loads(line)
    except ValueError:  # includes UnicodeDecodeError: a line cut inside a multibyte character
        return None
    if not isinstance(entry, dict):
        return None
    sha, text = entry.get("prompt_sha256"), entry.get("generation")
    if not (isinstance(sha, str) and len(sha) == 64 and isinstance(text, str)):
        return None
    try:
        text.encode("utf-8")  # json.loads lets lone surrogates through; the results files could not hold them
    except UnicodeEncodeError:
        return None
    return sha, text
