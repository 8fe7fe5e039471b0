"""The LLM judge (optional scorer): every answer scored on the upstream ten-criterion rubric, 0-10 each, in JSON.

The buckets were built from a judge's `task_score` (the first criterion, task fulfilment / relevance) of the base
model's answers, so this scores the adapters on the buckets' own scale; `judge_task` = that score / 10, in [0, 1]
like every other metric. Any OpenAI-compatible chat endpoint works (a local vLLM or `transformers serve`, or a
hosted API) through the `openai` client, which retries with exponential back-off; requests run in parallel up to
a bound. Replies are cached like generations (`GenerationCache`: append-only JSONL, resumable, a torn last line
skipped), keyed by the judge (model, rubric, decoding settings) and the exact request (prompt and answer), so a
re-run asks only for what is new and a parser change applies to cached replies. An answer the judge could not
score (a reply without valid JSON, or a request that failed after the retries) is kept with its reason and
counted in the report, never dropped silently; failed requests are not cached, so the next run asks again.
"""

from __future__ import annotations

import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from tqdm.auto import tqdm

from paraphrx.eval.cache import GenerationCache, sha256_text
from paraphrx.logs import add_secret

# Upstream's rubric, in its order; the first is the `task_score` the buckets were ranked by.
CRITERIA = {
    "task_fulfilment": "task fulfilment / relevance: does the answer do what the request asks, on topic?",
    "usefulness": "usefulness & actionability: can the user act on it?",
    "factual_accuracy": "factual accuracy: are its claims and results correct?",
    "depth": "efficiency / depth & completeness: complete without padding?",
    "reasoning": "reasoning quality: are its steps sound?",
    "tone": "tone: suited to the request?",
    "context_adaptation": "adaptation to context: does it follow the request's format, language and constraints?",
    "safety": "safety & bias avoidance",
    "structure": "structure & formatting: easy to read?",
    "creativity": "creativity: where the task invites it",
}
TASK_CRITERION = "task_fulfilment"
JUDGE_METRIC = "judge_task"
SCORED, UNPARSEABLE, FAILED = "scored", "unparseable", "failed"
KEY_ENV_VARS = ("JUDGE_API_KEY", "OPENAI_API_KEY")

RUBRIC = (
    "You are a strict, impartial judge of an AI assistant's answer to a user's request. The request may be phrased "
    "unusually (typos, capitals, another language, a code or YAML block, ...): judge the answer against what the "
    "user wants. Score the answer on each criterion from 0 (worst) to 10 (best):\n"
    + "\n".join(f"{i}. {key}: {text}" for i, (key, text) in enumerate(CRITERIA.items(), 1))
    + "\nReply with one JSON object and nothing else, with exactly these keys and integer values from 0 to 10:\n"
    + json.dumps({key: 0 for key in CRITERIA})
)
RUBRIC_VERSION = sha256_text(RUBRIC)[:12]


class JudgeError(Exception):
    """The judge cannot be used at all (unreachable, refused key, unknown model): the run stops with one line."""


@dataclass
class JudgeSettings:
    model: str
    base_url: str | None = None  # None: the openai client's default (OPENAI_BASE_URL, else api.openai.com)
    api_key: str | None = None  # None: JUDGE_API_KEY, else OPENAI_API_KEY, else none (a local server)
    concurrency: int = 8
    max_retries: int = 5
    timeout: float = 120.0
    max_tokens: int = 256

    def identity(self) -> dict:
        """What decides a reply besides the request: part of the cache key and of summary.json (never the key)."""
        return {"judge": self.model, "rubric": RUBRIC_VERSION, "max_tokens": self.max_tokens, "temperature": 0.0}


def judge_messages(request: str, context: str, answer: str) -> list[dict]:
    """One user turn, the rubric first: some chat templates (Gemma's among them) refuse a system turn."""
    user = f"{RUBRIC}\n\n## Request\n{request}\n\n"
    if context.strip():
        user += f"## Input\n{context}\n\n"
    user += f"## Answer\n{answer}"
    return [{"role": "user", "content": user}]


# --- parsing ---------------------------------------------------------------------------------------------------------
def _normalise_key(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(key).lower()).strip("_")


def _json_objects(text: str):
    """Every JSON object in the text (inside code fences, after a preamble, ...), nested ones after their parent."""
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        stack = [value]
        while stack:
            item = stack.pop(0)
            if isinstance(item, dict):
                yield item
                stack.extend(v for v in item.values() if isinstance(v, dict))


def parse_reply(text: str) -> tuple[dict[str, float] | None, str | None]:
    """(the ten scores, None) for a well-formed reply, else (None, why not). A reply counts when it holds a JSON
    object with every criterion as a number from 0 to 10 (a numeric string is accepted, a bool is not)."""
    found = None
    for obj in _json_objects(text or ""):
        normalised = {_normalise_key(k): v for k, v in obj.items()}
        if any(key in normalised for key in CRITERIA):
            found = normalised
            break
    if found is None:
        return None, "no JSON object with the rubric's criteria"
    missing = [key for key in CRITERIA if key not in found]
    if missing:
        return None, f"missing criteria: {', '.join(missing)}"
    scores = {}
    for key in CRITERIA:
        value = found[key]
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                return None, f"{key}: {found[key]!r} is not a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f"{key}: {found[key]!r} is not a number"
        if not (math.isfinite(value) and 0 <= value <= 10):
            return None, f"{key}: {found[key]!r} is outside 0-10"
        scores[key] = float(value)
    return scores, None


# --- asking ----------------------------------------------------------------------------------------------------------
def _api_key(settings: JudgeSettings) -> str:
    if settings.api_key:
        add_secret(settings.api_key)  # given as a flag: mask it in every log line too
        return settings.api_key
    for var in KEY_ENV_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return "EMPTY"  # local servers take no key, but the client insists on one


def _client(settings: JudgeSettings):
    try:
        from openai import OpenAI
    except ImportError:
        raise JudgeError("the judge needs the openai client: pip install -e '.[judge]'") from None
    return OpenAI(
        base_url=settings.base_url,
        api_key=_api_key(settings),
        max_retries=settings.max_retries,
        timeout=settings.timeout,
    )


def _ask(client, settings: JudgeSettings, request: str) -> str:
    reply = client.chat.completions.create(
        model=settings.model, messages=json.loads(request), temperature=0.0, max_tokens=settings.max_tokens
    )
    return reply.choices[0].message.content or ""


def ask_all(requests: list[str], settings: JudgeSettings, cache: GenerationCache) -> dict[str, str]:
    """Send the requests (JSON message lists) in parallel, caching each reply as it arrives; returns the reasons of
    the requests that failed after the client's retries. A judge that cannot be used at all raises JudgeError."""
    if not requests:
        return {}
    client = _client(settings)
    import openai

    where = f"judge {settings.model} at {client.base_url}"
    fatal = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)
    failures: dict[str, str] = {}
    pool = ThreadPoolExecutor(max_workers=settings.concurrency)
    try:
        futures = {pool.submit(_ask, client, settings, request): request for request in requests}
        for future in tqdm(as_completed(futures), total=len(futures), desc="judge"):
            request = futures[future]
            try:
                cache.add([request], [future.result()])
            except fatal as err:
                raise JudgeError(f"{where}: {type(err).__name__}: {_one_line(err)}") from None
            except openai.APITimeoutError as err:  # one slow answer: the others may still go through
                failures[request] = f"{type(err).__name__}: {_one_line(err)}"
            except openai.APIConnectionError as err:
                raise JudgeError(f"{where}: {type(err).__name__}: {_one_line(err)}") from None
            except openai.APIError as err:  # a status the retries did not cure, a malformed response
                failures[request] = f"{type(err).__name__}: {_one_line(err)}"
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return failures


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


# --- records ---------------------------------------------------------------------------------------------------------
def judge_request(record: dict) -> str:
    """The cache key and request body of one answer: the paraphrase as the model saw it (its whole prompt for a
    dataset without a `paraphrase` column), the input and the answer."""
    request = record.get("paraphrase") or record["prompt"]
    return json.dumps(judge_messages(request, record.get("input") or "", record["generation"]), ensure_ascii=False)


def judge_records(records: list[dict], settings: JudgeSettings, cache_dir: Path) -> list[dict]:
    """Every record with `judge_status` (scored / unparseable / failed), `judge_scores` (the ten, 0-10),
    `judge_task` (task fulfilment / 10) and, when not scored, `judge_error` and the raw `judge_reply`."""
    cache = GenerationCache(cache_dir, settings.identity())
    requests = [judge_request(r) for r in records]
    todo = cache.missing(requests)
    unique = len(set(requests))
    logger.info(
        "judge {}: {} of {} distinct answers cached, asking for {}",
        settings.model,
        unique - len(todo),
        unique,
        len(todo),
    )
    failures = ask_all(todo, settings, cache)
    judged = []
    for record, request in zip(records, requests):
        reply = cache.get(request)
        if reply is None:
            status, scores, error = FAILED, None, f"request failed: {failures.get(request, 'no reply')}"
        else:
            scores, error = parse_reply(reply)
            status = SCORED if scores else UNPARSEABLE
        judged.append(
            {
                **record,
                "judge_status": status,
                "judge_scores": scores,
                JUDGE_METRIC: scores[TASK_CRITERION] / 10.0 if scores else None,
                "judge_error": error,
                "judge_reply": None if scores else reply,
            }
        )
    counts = {s: sum(r["judge_status"] == s for r in judged) for s in (SCORED, UNPARSEABLE, FAILED)}
    logger.info("judge {}: {} scored, {} unparseable, {} failed", settings.model, *counts.values())
    return judged
