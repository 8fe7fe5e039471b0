"""The evaluation run: test rows -> greedy answers per model (cached) -> per-answer scores -> report folder."""

from __future__ import annotations

import gc
import json
import tempfile
from collections import defaultdict
from pathlib import Path

from loguru import logger
from tqdm.auto import tqdm

from paraphrx.compile_cache import compile_cache_folder
from paraphrx.dataset_io import check_local_dataset, dataset_fingerprint, load_prepared
from paraphrx.errors import UserError, loading, one_line
from paraphrx.eval.cache import GenerationCache, adapter_identity, base_identity, loaded_base_identity
from paraphrx.eval.config import EvalArguments, EvalModelConfig
from paraphrx.eval.engine import GemmaDecodeEngine, generate_texts, unsupported_reason
from paraphrx.eval.generation import (
    BASE,
    active_model,
    attach_adapters,
    for_generation,
    generate_batched,
    merge_adapter,
)
from paraphrx.eval.judge import JudgeError, JudgeSettings, judge_records
from paraphrx.eval.metrics import score_answer
from paraphrx.eval.report import GENERATIONS_FILE, build_summary, write_results
from paraphrx.eval.robustness import ORIGINAL
from paraphrx.eval.seeds import seed_groups
from paraphrx.logs import plural
from paraphrx.modeling import DEFAULT_ATTN_IMPLEMENTATION, load_base_model, load_tokenizer
from paraphrx.paths import local_folder_problem, source_problem
from paraphrx.recipe_cli import RecipeError, load_yaml_file

REQUIRED_COLUMNS = ("prompt", "reference", "source", "prompt_count", "instruct_type", "bucket")
ROW_FIELDS = REQUIRED_COLUMNS + ("task_score", "paraphrase", "input", "completion")  # every column prep writes
JUDGE_FIELDS = ("judge_status", "judge_scores", "judge_task", "judge_error", "judge_reply")
# The recipe keys that decide how the base is loaded (TRL ModelConfig fields).
RECIPE_MODEL_KEYS = (
    "dtype",
    "attn_implementation",
    "load_in_4bit",
    "load_in_8bit",
    "bnb_4bit_quant_type",
    "use_bnb_nested_quant",
    "bnb_4bit_quant_storage",
)


class EvalError(UserError):
    """Bad input: the message names the file, row and field (or the model or dataset that cannot be loaded)."""


def check_base_model(name: str, revision: str | None, origin: str) -> None:
    """A base that names a local folder must be one, and a Hub id must be reachable (not offline and uncached), before
    anything is loaded (paraphrx/paths.py)."""
    problem = source_problem(name, revision)
    if problem is not None:
        raise EvalError(f"{origin} {name}: {problem}")


# --- what to evaluate ------------------------------------------------------------------------------------------------
def discover_adapters(paths: list[str] | None, default_glob: str = "outputs/bucket*") -> dict[str, Path]:
    """Adapter folders by name (the folder's name). Without `paths`, every `outputs/bucket*` with an adapter."""
    if paths is None:
        found = sorted(p for p in Path().glob(default_glob) if (p / "adapter_config.json").exists())
    else:
        found = [Path(p) for p in paths]
    adapters: dict[str, Path] = {}
    for path in found:
        problem = local_folder_problem(str(path)) if not path.is_dir() else None
        if problem is not None:
            raise EvalError(f"--adapters {path}: {problem}")
        if not (path / "adapter_config.json").is_file():
            raise EvalError(f"{path}: no adapter_config.json (expected a PEFT adapter folder saved by train_sft.py)")
        if path.name in adapters or path.name == BASE:
            raise EvalError(f"{path}: adapter name {path.name!r} is already taken; adapter folder names must differ")
        adapters[path.name] = path
    return adapters


def _read_yaml(path: Path) -> dict:
    try:
        data = load_yaml_file(path) or {}
    except RecipeError as err:
        raise EvalError(str(err)) from None
    if not isinstance(data, dict):
        raise EvalError(f"{path}: expected a mapping of recipe keys")
    return data


def resolve_model_config(model_args: EvalModelConfig, adapters: dict[str, Path], use_recipe: bool) -> EvalModelConfig:
    """Fill the base model from the adapters' `base_model_name_or_path` and, with `use_recipe`, the loading keys
    from their `recipe.yaml`. All adapters must share one base and one way of loading it (it is loaded once)."""
    bases, loading = {}, {}
    for name, path in adapters.items():
        config_file = path / "adapter_config.json"
        try:
            bases[name] = json.loads(config_file.read_text(encoding="utf-8"))["base_model_name_or_path"]
        except (json.JSONDecodeError, KeyError) as err:
            raise EvalError(f"{config_file}: unreadable or missing field 'base_model_name_or_path' ({err})") from None
        recipe = path / "recipe.yaml"
        if use_recipe and recipe.exists():
            data = _read_yaml(recipe)
            loading[name] = {k: data[k] for k in RECIPE_MODEL_KEYS if k in data}
    if model_args.model_name_or_path is None:
        if not bases:
            raise EvalError("no model: pass --model_name_or_path or --adapters (no outputs/bucket*/ adapter found)")
        model_args.model_name_or_path = next(iter(bases.values()))
    for name, base in bases.items():
        if base != model_args.model_name_or_path:
            raise EvalError(
                f"{adapters[name] / 'adapter_config.json'}: field 'base_model_name_or_path' is {base!r}, "
                f"but the evaluated base is {model_args.model_name_or_path!r}; evaluate them separately"
            )
    if loading:
        first_name, first = next(iter(loading.items()))
        for name, keys in loading.items():
            if keys != first:
                raise EvalError(
                    f"{adapters[name] / 'recipe.yaml'}: model keys {keys} differ from {first_name}'s "
                    f"{first}; pass --use_recipe_model_config false and set them on the command line"
                )
        for key, value in first.items():
            if getattr(model_args, key) != value:
                logger.info("{} = {!r} from {}'s recipe.yaml", key, value, first_name)
            setattr(model_args, key, value)
    return model_args


# --- the test rows ---------------------------------------------------------------------------------------------------
def load_rows(eval_args: EvalArguments) -> list[dict]:
    """The split's rows as dicts, checked field by field, then cut down by --max_prompts / --max_paraphrases_..."""
    where = f"{eval_args.dataset} split {eval_args.split!r}"
    try:
        check_local_dataset(eval_args.dataset)
    except FileNotFoundError as err:
        raise EvalError(f"--dataset {eval_args.dataset}: {err.strerror}") from None
    with loading(where, EvalError):  # a Hub dataset that cannot be reached too
        ds = load_prepared(eval_args.dataset, eval_args.split, revision=eval_args.dataset_revision)
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise EvalError(f"{where}: missing column(s) {missing}; rebuild it with `make prep`")
    rows = ds.select_columns([c for c in ROW_FIELDS if c in ds.column_names]).to_list()
    for i, row in enumerate(rows):
        if row["bucket"] not in (1, 2, 3, 4, 5):
            raise EvalError(f"{where} row {i}: field 'bucket' is {row['bucket']!r}, expected 1..5")
        for key in ("prompt", "source", "instruct_type"):
            if not isinstance(row[key], str) or not row[key]:
                raise EvalError(f"{where} row {i}: field {key!r} is empty")
        if not isinstance(row["reference"], str):
            raise EvalError(f"{where} row {i}: field 'reference' is not a string")
    if not rows:
        raise EvalError(f"{where}: no rows")
    selected = select_rows(rows, eval_args.max_prompts, eval_args.max_paraphrases_per_prompt)
    if eval_args.max_prompts is not None or eval_args.max_paraphrases_per_prompt is not None:

        def prompt_count(some):
            return len({(r["source"], r["prompt_count"]) for r in some})

        logger.info(
            "quick run: {} of {} rows, from {} of {} prompts",
            len(selected),
            len(rows),
            prompt_count(selected),
            prompt_count(rows),
        )
    return selected


def select_rows(rows: list[dict], max_prompts: int | None, max_per_prompt: int | None) -> list[dict]:
    """The first `max_prompts` prompts of each source (by prompt_count) and at most `max_per_prompt` rows of each:
    the original wording first, then one row per bucket in turn, so every bucket stays represented."""
    prompts: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        prompts[(row["source"], row["prompt_count"])].append(row)
    kept_per_source: dict[str, int] = defaultdict(int)
    selected = []
    for (source, _), group in sorted(prompts.items()):
        if max_prompts is not None and kept_per_source[source] >= max_prompts:
            continue
        kept_per_source[source] += 1
        if max_per_prompt is not None and len(group) > max_per_prompt:
            by_bucket = defaultdict(list)
            for row in group:
                if row["instruct_type"] != ORIGINAL:
                    by_bucket[row["bucket"]].append(row)
            interleaved = [r for r in group if r["instruct_type"] == ORIGINAL]
            while any(by_bucket.values()):
                interleaved += [by_bucket[b].pop(0) for b in sorted(by_bucket) if by_bucket[b]]
            group = interleaved[:max_per_prompt]
        selected.extend(group)
    return selected


# --- answers ---------------------------------------------------------------------------------------------------------
def loading_settings(model_args: EvalModelConfig, eval_args: EvalArguments) -> dict:
    """Everything besides the weights that decides a greedy answer (part of the cache key and the summary)."""
    return {
        **{k: getattr(model_args, k) for k in RECIPE_MODEL_KEYS},
        "attn_implementation": model_args.attn_implementation or DEFAULT_ATTN_IMPLEMENTATION,
        "merged": eval_args.merge_adapters,
        "max_new_tokens": eval_args.max_new_tokens,
        "decoding": "greedy",
    }


def generate_answers(
    prompts: list[str],
    models: dict[str, Path | None],
    model_args: EvalModelConfig,
    eval_args: EvalArguments,
    cache_dir: Path,
) -> tuple[dict[str, dict[str, str]], dict]:
    """{model name: {prompt: answer}} for every model, generating only what the cache lacks; and each identity.

    A Hub base that was never downloaded has no commit yet: it is loaded first, and the caches are keyed by the
    commit the load resolved, the one the next run reads from the HF cache before loading anything."""
    settings = loading_settings(model_args, eval_args)

    def open_caches(base: dict) -> tuple[dict[str, GenerationCache], dict[str, list[str]]]:
        caches = {  # the base model's answers are the same merged or not: only adapters are merged
            name: GenerationCache(
                cache_dir,
                {
                    **base,
                    "adapter": adapter_identity(path) if path else None,
                    "settings": {**settings, "merged": settings["merged"] and path is not None},
                },
            )
            for name, path in models.items()
        }
        return caches, {name: cache.missing(prompts) for name, cache in caches.items()}

    base = base_identity(model_args.model_name_or_path, model_args.model_revision)
    caches, todo = open_caches(base)
    unresolved = base.get("commit", "") is None
    if unresolved or any(todo.values()):
        tokenizer = for_generation(_loading(load_tokenizer, model_args))
        model = _loading(load_base_model, model_args)
        loaded = loaded_base_identity(model_args.model_name_or_path, model_args.model_revision)
        if loaded != base:
            caches, todo = open_caches(loaded)
        _log_cached(prompts, todo)
        check_prompt_lengths(
            tokenizer, list(dict.fromkeys(p for missing in todo.values() for p in missing)), eval_args.max_prompt_tokens
        )
        if eval_args.merge_adapters:
            for name, path in models.items():
                if todo[name]:
                    model = model if model is not None else _loading(load_base_model, model_args)
                    model = merge_adapter(model, path) if path else model
                    _generate_models(model, tokenizer, {name: None}, todo, caches, eval_args)
                    model = None
                    _free_memory()
        else:
            _generate_models(model, tokenizer, models, todo, caches, eval_args)
        del model
        _free_memory()
    else:
        _log_cached(prompts, todo)
    answers = {name: {p: cache.get(p) for p in prompts} for name, cache in caches.items()}
    identities = {name: {"cache_key": cache.key, **cache.identity} for name, cache in caches.items()}
    return answers, identities


class PromptTooLongError(EvalError):
    def __init__(self, prompt: str, tokens: int, limit: int):
        super().__init__(f"a prompt of {tokens:,} tokens, more than --max_prompt_tokens {limit:,}")
        self.prompt, self.tokens, self.limit = prompt, tokens, limit


def check_prompt_lengths(tokenizer, prompts: list[str], limit: int) -> None:
    """Refuse a prompt longer than `limit` tokens before generating: a batch's attention memory grows with the
    square of its longest prompt (a 100k-character paraphrase asked for ~10 GB)."""
    for prompt, ids in zip(prompts, tokenizer(prompts)["input_ids"] if prompts else []):
        if len(ids) > limit:
            raise PromptTooLongError(prompt, len(ids), limit)


def _loading(load, model_args: EvalModelConfig):
    """`load(model_args, trust_remote_code)`, the tokenizer or the base (modeling.py: the loader training uses); a
    missing, unreachable or gated model becomes one EvalError."""
    with loading(f"base model {model_args.model_name_or_path}", EvalError):
        return load(model_args, model_args.trust_remote_code)


def _log_cached(prompts: list[str], todo: dict[str, list[str]]) -> None:
    for name, missing in todo.items():
        logger.info("{}: {} of {} cached", name, len(prompts) - len(missing), plural(len(prompts), "prompt"))


def _generate_models(
    model,
    tokenizer,
    models: dict[str, Path | None],
    todo: dict[str, list[str]],
    caches: dict[str, GenerationCache],
    eval_args: EvalArguments,
) -> None:
    """Each model's missing answers on this loaded base; `models` maps a name to its adapter folder, or to None for
    the loaded model itself (the base, or a merged adapter). The engine answers them all in one batch, HF generate
    one model after another."""
    adapters = {n: p for n, p in models.items() if p is not None and todo[n]}
    engine = _engine(model, adapters, eval_args)
    if engine is None:
        model = attach_adapters(model, adapters)
        for name in models:
            if todo[name]:
                with active_model(model, name) as active:
                    _generate(active, tokenizer, name, todo[name], caches[name], eval_args)
        return
    as_engine_model = {name: name if path else BASE for name, path in models.items()}
    jobs = {as_engine_model[n]: todo[n] for n in models if todo[n]}
    logger.info(
        "{}: generating {} in one batch (max {} new tokens)",
        ", ".join(n for n in models if todo[n]),
        plural(sum(len(todo[n]) for n in models), "answer"),
        eval_args.max_new_tokens,
    )
    _generate_with_engine(engine, tokenizer, jobs, {as_engine_model[n]: caches[n] for n in models}, eval_args)


def _engine(model, adapters: dict[str, Path], eval_args: EvalArguments) -> GemmaDecodeEngine | None:
    """The decode engine for this base and these adapters, or None for HF generate (`--generation_engine`)."""
    if eval_args.generation_engine == "hf":
        return None
    reason = unsupported_reason(model, adapters)
    if reason is not None:
        if eval_args.generation_engine == "engine":
            raise EvalError(f"--generation_engine engine: {reason}")
        logger.info("generating with HF generate, one model at a time: the engine does not cover this ({})", reason)
        return None
    return GemmaDecodeEngine(model, adapters, max_slots=eval_args.engine_slots)


def _generate_with_engine(
    engine, tokenizer, jobs: dict[str, list[str]], caches: dict[str, GenerationCache], eval_args: EvalArguments
) -> None:
    """Every model's missing answers in one engine run; each answer reaches its cache as its row finishes. The
    engine's compiled kernels go to training's compile cache folder, which outlives a reboot: the next evaluation
    loads them instead of compiling."""
    total = sum(len(prompts) for prompts in jobs.values())
    with compile_cache_folder(), tqdm(total=total, desc="generate", unit="answer") as progress:

        def on_answers(name: str, prompts: list[str], texts: list[str]) -> None:
            caches[name].add(prompts, texts)
            progress.update(len(prompts))

        generate_texts(engine, tokenizer, jobs, eval_args.max_new_tokens, on_answers=on_answers)


def _generate(model, tokenizer, name, prompts, cache, eval_args) -> None:
    logger.info(
        "{}: generating {} (batch {}, max {} new tokens)",
        name,
        plural(len(prompts), "answer"),
        eval_args.batch_size,
        eval_args.max_new_tokens,
    )
    generate_batched(
        model,
        tokenizer,
        prompts,
        batch_size=eval_args.batch_size,
        max_new_tokens=eval_args.max_new_tokens,
        on_batch=cache.add,
        desc=name,
    )


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- scores ----------------------------------------------------------------------------------------------------------
def score_records(rows: list[dict], answers: dict[str, dict[str, str]]) -> list[dict]:
    """One record per (model, row): the row's fields, the generation and its scores."""
    return [
        score_record({"model": name, **row, "generation": by_prompt[row["prompt"]]})
        for name, by_prompt in answers.items()
        for row in rows
    ]


def score_record(record: dict) -> dict:
    return {**record, **score_answer(record["generation"], record["reference"], record["source"])}


def read_generations(path: Path) -> list[dict]:
    """Records of an earlier run (for --recompute_metrics_only), checked line by line."""
    if not path.exists():
        raise EvalError(f"{path}: not found; run the evaluation once without --recompute_metrics_only")
    records = []
    with path.open("rb") as handle:
        for line_no, line in enumerate(handle, 1):
            try:
                record = json.loads(line)
            except ValueError as err:  # not JSON, or not UTF-8 (a line cut inside a character)
                raise EvalError(f"{path}:{line_no}: not JSON ({getattr(err, 'msg', None) or err.reason})") from None
            if not isinstance(record, dict):
                raise EvalError(f"{path}:{line_no}: expected an object")
            for key in ("model", "generation") + REQUIRED_COLUMNS:
                if key not in record:
                    raise EvalError(f"{path}:{line_no}: missing field {key!r}")
            records.append(
                {
                    **{k: record.get(k) for k in ("model",) + ROW_FIELDS + ("generation",)},
                    **{k: record[k] for k in JUDGE_FIELDS if k in record},
                }
            )
    return records


def read_run_context(path: Path) -> dict:
    """The `run` section of an earlier summary.json ({} when there is none); a corrupt file is an EvalError."""
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EvalError(f"{path}: not valid JSON ({one_line(err)}); delete it to start a fresh report") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("run", {}), dict):
        raise EvalError(f"{path}: expected an object with a 'run' object; delete it to start a fresh report")
    return summary.get("run", {})


def judge_answers(records: list[dict], eval_args: EvalArguments) -> tuple[list[dict], dict]:
    """With --judge_model, every record scored by the judge (cached beside the generations); also the judge's
    entry of the run context (never its key)."""
    if not eval_args.judge_model:
        return records, {}
    settings = JudgeSettings(
        model=eval_args.judge_model,
        base_url=eval_args.judge_base_url,
        api_key=eval_args.judge_api_key,
        concurrency=eval_args.judge_concurrency,
        max_retries=eval_args.judge_max_retries,
        timeout=eval_args.judge_timeout,
        max_tokens=eval_args.judge_max_tokens,
    )
    try:
        if eval_args.use_cache:
            records = judge_records(records, settings, Path(eval_args.cache_dir))
        else:
            with tempfile.TemporaryDirectory(prefix="paraphrx-judge-") as scratch:
                records = judge_records(records, settings, Path(scratch))
    except JudgeError as err:
        raise EvalError(str(err)) from None
    return records, {"judge": {**settings.identity(), "base_url": settings.base_url}}


def find_seed_groups(adapters: dict[str, Path]) -> dict[str, dict[str, int | None]]:
    """Adapters whose recipe.yaml differ only in seed (averaged in the report): {model name: {run: seed}}."""
    recipes = {
        name: _read_yaml(path / "recipe.yaml") if (path / "recipe.yaml").is_file() else None
        for name, path in adapters.items()
    }
    groups = seed_groups(recipes)
    for group, runs in groups.items():
        logger.info("{}: runs {} differ only in seed; the report averages them", group, list(runs))
    return groups


# --- the run ---------------------------------------------------------------------------------------------------------
def run_evaluation(eval_args: EvalArguments, model_args: EvalModelConfig) -> Path:
    """Evaluate and write `<output_dir>/<output_name>/`; returns that folder."""
    out_dir = eval_args.results_folder()
    bootstrap = {"replicates": eval_args.bootstrap_replicates, "seed": eval_args.bootstrap_seed}
    if eval_args.recompute_metrics_only:
        context = read_run_context(out_dir / "summary.json")
        records = [score_record(r) for r in read_generations(out_dir / GENERATIONS_FILE)]
        models = list(dict.fromkeys(r["model"] for r in records))
        logger.info(
            "re-scoring {} of {} from {}", plural(len(records), "generation"), plural(len(models), "model"), out_dir
        )
        records, judge = judge_answers(records, eval_args)
        context = {**context, **judge, "recomputed": True}
        return write_results(out_dir, records, build_summary(records, models, context, **bootstrap))

    adapters = discover_adapters(eval_args.adapters)
    groups = find_seed_groups(adapters)
    given = model_args.model_name_or_path
    model_args = resolve_model_config(model_args, adapters, eval_args.use_recipe_model_config)
    origin = (
        "--model_name_or_path"
        if given is not None
        else f"{next(iter(adapters.values())) / 'adapter_config.json'}: base_model_name_or_path"
    )
    check_base_model(model_args.model_name_or_path, model_args.model_revision, origin)
    models: dict[str, Path | None] = ({BASE: None} if eval_args.include_base else {}) | dict(adapters)
    if not models:
        raise EvalError("nothing to evaluate: --include_base false and no adapters")
    rows = load_rows(eval_args)
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    logger.info(
        "{} ({} distinct) x {}: {}",
        plural(len(rows), "row"),
        plural(len(prompts), "prompt"),
        plural(len(models), "model"),
        list(models),
    )

    try:
        if eval_args.use_cache:
            answers, identities = generate_answers(prompts, models, model_args, eval_args, Path(eval_args.cache_dir))
        else:
            with tempfile.TemporaryDirectory(prefix="paraphrx-eval-") as scratch:
                answers, identities = generate_answers(prompts, models, model_args, eval_args, Path(scratch))
    except PromptTooLongError as err:  # name the row: its prompt's source, prompt_count and phrasing
        row = next(r for r in rows if r["prompt"] == err.prompt)
        raise EvalError(
            f"{eval_args.dataset} split {eval_args.split!r}: {row['source']} prompt_count "
            f"{row['prompt_count']} ({row['instruct_type']}): field 'prompt': {err.tokens:,} tokens, "
            f"more than --max_prompt_tokens {err.limit:,}"
        ) from None
    records, judge = judge_answers(score_records(rows, answers), eval_args)
    context = {
        "dataset": dataset_fingerprint(eval_args.dataset, eval_args.dataset_revision),
        "split": eval_args.split,
        "base_model": model_args.model_name_or_path,
        "settings": loading_settings(model_args, eval_args),
        "generation_engine": eval_args.generation_engine,
        "adapters": {n: str(p) for n, p in adapters.items()},
        "identities": identities,
        "max_prompts": eval_args.max_prompts,
        "max_paraphrases_per_prompt": eval_args.max_paraphrases_per_prompt,
        "seed_groups": groups,
        **judge,
    }
    return write_results(out_dir, records, build_summary(records, list(models), context, **bootstrap))
