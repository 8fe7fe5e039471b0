"""The evaluation's dataclasses: what to evaluate and how (`EvalArguments`), and how the base model is loaded
(`EvalModelConfig`).

`EvalModelConfig` holds only the loading fields of TRL's `ModelConfig` (the same names, read by the loader training
uses, paraphrx/modeling.py), not its LoRA training flags; `trust_remote_code` is off unless turned on, and dtype
defaults to bf16 (TRL's float32 is right for nothing we evaluate on a GPU). When an adapter folder holds the
`recipe.yaml` its training resolved, the model keys of that recipe (dtype, 4-bit, attention) replace these, so the
adapter runs on the base it trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from paraphrx.limits import MAX_PROMPT_TOKENS
from paraphrx.paths import output_folder_problem


@dataclass
class EvalArguments:
    dataset: str = field(
        default="data/paraphrx-alpaca", metadata={"help": "Prepared dataset: local folder (`make prep`) or Hub id."}
    )
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision of the prepared dataset."})
    split: str = field(default="test", metadata={"help": "Split whose paraphrases are answered (every bucket)."})
    adapters: list[str] | None = field(
        default=None,
        metadata={
            "help": "Adapter folders to evaluate (default: every outputs/bucket*/ with an adapter_config.json). "
            "Each is named after its folder."
        },
    )
    include_base: bool = field(default=True, metadata={"help": "Also evaluate the base model without any adapter."})
    merge_adapters: bool = field(
        default=False,
        metadata={
            "help": "Fold each adapter into the base with merge_and_unload() (reloads the base per adapter; "
            "on a 4-bit base the merged weights are re-rounded, so results differ slightly)."
        },
    )
    use_recipe_model_config: bool = field(
        default=True,
        metadata={"help": "Load the base as the adapter's recipe.yaml did (dtype, 4-bit, attention) when present."},
    )
    generation_engine: str = field(
        default="auto",
        metadata={
            "help": "auto: the decode engine (every model in one batch, paraphrx/eval/engine.py) when it covers "
            "the base and adapters, else HF generate; engine: the engine or a one-line error; hf: HF "
            "generate in left-padded batches, one model at a time.",
            "choices": ["auto", "engine", "hf"],
        },
    )
    engine_slots: int | None = field(
        default=None,
        metadata={"help": "Engine: rows decoded together (default: as many as fit in free GPU memory, at most 512)."},
    )
    batch_size: int = field(default=32, metadata={"help": "HF generate: prompts per generate() call (left-padded)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Greedy answer length limit in tokens."})
    max_prompt_tokens: int = field(
        default=MAX_PROMPT_TOKENS,
        metadata={"help": "Refuse a prompt longer than this many tokens (a batch's memory grows with its square)."},
    )
    max_prompts: int | None = field(
        default=None, metadata={"help": "Quick runs: keep only the first N prompts of each source."}
    )
    max_paraphrases_per_prompt: int | None = field(
        default=None,
        metadata={
            "help": "Quick runs: keep at most N paraphrases per prompt, the original first, then spread "
            "evenly over the buckets."
        },
    )
    output_dir: str = field(default="outputs/eval", metadata={"help": "Results land in <output_dir>/<output_name>/."})
    output_name: str | None = field(
        default=None, metadata={"help": "Results folder name (default: the dataset's name, e.g. paraphrx-alpaca)."}
    )
    cache_dir: str = field(
        default="outputs/eval/.cache",
        metadata={"help": "Generation cache, keyed by model+adapter identity, prompt and generation settings."},
    )
    use_cache: bool = field(default=True, metadata={"help": "Reuse cached generations and add new ones."})
    recompute_metrics_only: bool = field(
        default=False,
        metadata={
            "help": "Re-score <output_dir>/<output_name>/generations.jsonl and rewrite the report; "
            "loads no model and generates nothing."
        },
    )
    log_dir: str = field(default="logs", metadata={"help": "Folder for loguru log files."})
    # The report's statistics (README "Evaluation": intervals, paired comparisons, seeds).
    bootstrap_replicates: int = field(
        default=1000, metadata={"help": "Bootstrap replicates over prompts for the 95% intervals (0: no intervals)."}
    )
    bootstrap_seed: int = field(default=0, metadata={"help": "Seed of the bootstrap draws: same seed, same intervals."})
    # The LLM judge (optional scorer; README "Evaluation", judge).
    judge_model: str | None = field(
        default=None,
        metadata={
            "help": "Also score every answer with this LLM judge (its model name at the endpoint) on the "
            "ten-criterion rubric; off unless given."
        },
    )
    judge_base_url: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vLLM, transformers serve); "
            "default: OPENAI_BASE_URL, else api.openai.com."
        },
    )
    judge_api_key: str | None = field(
        default=None,
        metadata={
            "help": "Key of the judge endpoint; better set JUDGE_API_KEY (or OPENAI_API_KEY) in the "
            "environment. Never logged or written."
        },
    )
    judge_concurrency: int = field(default=8, metadata={"help": "Judge requests in flight at once."})
    judge_max_retries: int = field(
        default=5, metadata={"help": "Retries per judge request (exponential back-off, by the openai client)."}
    )
    judge_timeout: float = field(default=120.0, metadata={"help": "Seconds per judge request attempt."})
    judge_max_tokens: int = field(default=256, metadata={"help": "Length limit of a judge reply in tokens."})

    def __post_init__(self):
        for name in (
            "batch_size",
            "engine_slots",
            "max_new_tokens",
            "max_prompt_tokens",
            "max_prompts",
            "max_paraphrases_per_prompt",
            "judge_concurrency",
            "judge_max_tokens",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be at least 1, got {value}")
        for name in ("bootstrap_replicates", "judge_max_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be at least 0, got {getattr(self, name)}")
        if not self.judge_timeout > 0:
            raise ValueError(f"--judge_timeout must be more than 0 seconds, got {self.judge_timeout}")
        for name in ("output_dir", "cache_dir", "log_dir"):
            problem = output_folder_problem(getattr(self, name))
            if problem:
                raise ValueError(f"--{name} {getattr(self, name)}: {problem}")

    def results_folder(self) -> Path:
        """`<output_dir>/<output_name>`. Without --output_name: the dataset's name for the full evaluation `make eval`
        runs (every default adapter, the whole split, default answer length), and that name plus what differs for any
        other run (`paraphrx-alpaca-bucket1+bucket1-5-5prompts`), so a quick or ad-hoc run never replaces that
        report; the same flags give the same folder (what --recompute_metrics_only reads)."""
        if self.output_name:
            return Path(self.output_dir) / self.output_name
        parts = [Path(self.dataset.rstrip("/")).name]
        if self.adapters is not None:
            names = [Path(a.rstrip("/")).name for a in self.adapters]
            digest = hashlib.sha256("+".join(names).encode()).hexdigest()[:8]
            parts.append("+".join(names) if len(names) <= 3 else f"{len(names)}adapters-{digest}")
        default = {f.name: _default(f) for f in dataclasses.fields(EvalArguments)}
        parts += [
            text
            for changed, text in (
                (self.split != default["split"], self.split),
                (not self.include_base, "nobase"),
                (self.merge_adapters, "merged"),
                (self.max_prompts is not None, f"{self.max_prompts}prompts"),
                (self.max_paraphrases_per_prompt is not None, f"{self.max_paraphrases_per_prompt}per-prompt"),
                (self.max_new_tokens != default["max_new_tokens"], f"{self.max_new_tokens}tokens"),
            )
            if changed
        ]
        return Path(self.output_dir) / "-".join(parts)


@dataclass
class EvalModelConfig:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Base model (folder or Hub id); default: the adapters' base_model_name_or_path."},
    )
    model_revision: str = field(default="main", metadata={"help": "Hub revision of the base model."})
    dtype: str | None = field(
        default="bfloat16",
        metadata={
            "help": "Weights (and 4-bit compute) dtype when no recipe.yaml says otherwise.",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention implementation (default: eager, which applies Gemma-2's soft-capping)."},
    )
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the base in 8 bit (bitsandbytes)."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the base in 4 bit (bitsandbytes)."})
    bnb_4bit_quant_type: str = field(
        default="nf4", metadata={"help": "4-bit quantisation type.", "choices": ["fp4", "nf4"]}
    )
    use_bnb_nested_quant: bool = field(default=False, metadata={"help": "4-bit double (nested) quantisation."})
    bnb_4bit_quant_storage: str | None = field(default=None, metadata={"help": "Storage dtype of the 4-bit weights."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run model code from the Hub repo (off: only transformers' own classes)."}
    )

    def __post_init__(self):
        if self.load_in_8bit and self.load_in_4bit:
            raise ValueError("load_in_4bit and load_in_8bit: choose one")


# What --recompute_metrics_only reads besides the stored generations: where they are, the report's statistics, the judge.
RESCORING_FLAGS = {
    "dataset",
    "output_dir",
    "output_name",
    "recompute_metrics_only",
    "log_dir",
    "cache_dir",
    "use_cache",
    "bootstrap_replicates",
    "bootstrap_seed",
    "judge_model",
    "judge_base_url",
    "judge_api_key",
    "judge_concurrency",
    "judge_max_retries",
    "judge_timeout",
    "judge_max_tokens",
}


def check_rescoring_flags(eval_args: EvalArguments, model_args: EvalModelConfig) -> None:
    """--recompute_metrics_only loads no model and generates nothing: a flag that would change the answers (which
    adapters, how many prompts, how the base is loaded, ...) would be ignored silently, so it is refused."""
    if not eval_args.recompute_metrics_only:
        return
    ignored = [
        f"--{f.name}"
        for args in (eval_args, model_args)
        for f in dataclasses.fields(args)
        if f.name not in RESCORING_FLAGS and getattr(args, f.name) != _default(f)
    ]
    if ignored:
        raise ValueError(
            f"recompute_metrics_only re-scores the stored generations and ignores {', '.join(ignored)}: "
            "drop them (or run without --recompute_metrics_only to generate anew)"
        )


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
