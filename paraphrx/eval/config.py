"""The evaluation's dataclasses: what to evaluate and how (`EvalArguments`) plus TRL's `ModelConfig` for loading.

`EvalModelConfig` adds only `trust_remote_code` (off unless turned on) and a bf16 default: TRL's float32 default is
right for nothing we evaluate on a GPU. When an adapter folder holds the `recipe.yaml` its training resolved, the
model keys of that recipe (dtype, 4-bit, attention) replace these, so the adapter runs on the base it trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig

from paraphrx.limits import MAX_PROMPT_TOKENS


@dataclass
class EvalArguments:
    dataset: str = field(
        default="data/paraphrx-alpaca", metadata={"help": "Prepared dataset: local folder (`make prep`) or Hub id."}
    )
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision of the prepared dataset."})
    split: str = field(default="test", metadata={"help": "Split whose paraphrases are answered (every bucket)."})
    adapters: list[str] | None = field(
        default=None,
        metadata={"help": "Adapter folders to evaluate (default: every outputs/bucket*/ with an adapter_config.json). "
                          "Each is named after its folder."},
    )
    include_base: bool = field(default=True, metadata={"help": "Also evaluate the base model without any adapter."})
    merge_adapters: bool = field(
        default=False,
        metadata={"help": "Fold each adapter into the base with merge_and_unload() (reloads the base per adapter; "
                          "on a 4-bit base the merged weights are re-rounded, so results differ slightly)."},
    )
    use_recipe_model_config: bool = field(
        default=True,
        metadata={"help": "Load the base as the adapter's recipe.yaml did (dtype, 4-bit, attention) when present."},
    )
    generation_engine: str = field(
        default="auto",
        metadata={"help": "auto: the decode engine (every model in one batch, paraphrx/eval/engine.py) when it covers "
                          "the base and adapters, else HF generate; engine: the engine or a one-line error; hf: HF "
                          "generate in left-padded batches, one model at a time.",
                  "choices": ["auto", "engine", "hf"]},
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
        metadata={"help": "Quick runs: keep at most N paraphrases per prompt, the original first, then spread "
                          "evenly over the buckets."},
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
        metadata={"help": "Re-score <output_dir>/<output_name>/generations.jsonl and rewrite the report; "
                          "loads no model and generates nothing."},
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
        metadata={"help": "Also score every answer with this LLM judge (its model name at the endpoint) on the "
                          "ten-criterion rubric; off unless given."},
    )
    judge_base_url: str | None = field(
        default=None,
        metadata={"help": "OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vLLM, transformers serve); "
                          "default: OPENAI_BASE_URL, else api.openai.com."},
    )
    judge_api_key: str | None = field(
        default=None,
        metadata={"help": "Key of the judge endpoint; better set JUDGE_API_KEY (or OPENAI_API_KEY) in the "
                          "environment. Never logged or written."},
    )
    judge_concurrency: int = field(default=8, metadata={"help": "Judge requests in flight at once."})
    judge_max_retries: int = field(
        default=5, metadata={"help": "Retries per judge request (exponential back-off, by the openai client)."}
    )
    judge_timeout: float = field(default=120.0, metadata={"help": "Seconds per judge request attempt."})
    judge_max_tokens: int = field(default=256, metadata={"help": "Length limit of a judge reply in tokens."})

    def __post_init__(self):
        for name in ("batch_size", "engine_slots", "max_new_tokens", "max_prompt_tokens", "max_prompts",
                     "max_paraphrases_per_prompt", "judge_concurrency", "judge_max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be at least 1, got {value}")
        for name in ("bootstrap_replicates", "judge_max_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be at least 0, got {getattr(self, name)}")
        if not self.judge_timeout > 0:
            raise ValueError(f"--judge_timeout must be more than 0 seconds, got {self.judge_timeout}")


@dataclass
class EvalModelConfig(ModelConfig):
    dtype: str | None = field(
        default="bfloat16",
        metadata={"help": "Weights (and 4-bit compute) dtype when no recipe.yaml says otherwise.",
                  "choices": ["auto", "bfloat16", "float16", "float32"]},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run model code from the Hub repo (off: only transformers' own classes)."}
    )
