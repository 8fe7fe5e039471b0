"""Every private name of TRL, transformers and torch that paraphrx relies on, in one place, checked at import.

Where no public API does the job, the fast path (fast_path.py) reaches into library internals: TRL's chunked
log-prob kernels (lm_head.py), the output type of the forward TRL patches onto the model for its fused LM head
(completion_positions.py), SFTTrainer's per-step metric state (device_loss.py), Trainer's gradient clipping
(module_walks.py), transformers' packed-sequence check, its block-mask builder and the mask builders a modeling
module imports, dynamo's recompile limit and float specialization, inductor's default cache folder, its
precision-cast emulation (the decode engine) and torch's record of a compiled module; the label-mask view runs
SFTTrainer's dataset preparation without a model (label_mask.py), and a training run's trainer routes that
preparation through token_reuse.py (`PreparationHook`). No other module names them. Each is looked up when
paraphrx is imported: one that a TRL, transformers or torch release renamed or removed lands in `MISSING` instead of
failing an import, so `fast_path: auto` trains on the plain path (one warning line) and `fast_path: on` refuses
(config.fast_path_enabled). pyproject.toml bounds the versions they were tested on.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from paraphrx.patches import patch_attribute

_KERNELS = "trl.kernels.chunked_logprob"
_TRL_UTILS = "trl.trainer.utils"
# (module, attribute path) of every private or internal name used; the values below are looked up from them.
REQUIRED = (
    (_KERNELS, "_BLOCK_SIZE"), (_KERNELS, "_addmm_fp32"), (_KERNELS, "_use_triton"),
    (_KERNELS, "_forward_kernel"), (_KERNELS, "_forward_tile"), (_KERNELS, "_backward_kernel"),
    (_KERNELS, "_backward_tile"),
    (_TRL_UTILS, "_CHUNKED_LOGPROB_CHUNK_SIZE"), (_TRL_UTILS, "FusedCausalLMOutput"), (_TRL_UTILS, "add_fused_lm_head"),
    ("trl", "SFTTrainer._prepare_dataset"), ("transformers", "Trainer._clip_grad_norm"),
    ("transformers.masking_utils", "find_packed_sequence_indices"),
    ("torch._dynamo.config", "recompile_limit"), ("torch._dynamo.config", "specialize_float"),
    ("torch.nn", "Module._compiled_call_impl"), ("transformers.masking_utils", "create_block_mask"),
)  # fmt: skip
# What SFTTrainer.__init__ sets up for its per-step metrics, which device_loss.py keeps on the device.
SFT_TRAINER_STATE = ("_metrics", "_total_train_tokens", "_tp_size")


def _resolve(module: str, path: str):
    value = importlib.import_module(module)
    for part in path.split("."):
        value = getattr(value, part)
    return value


def find_missing() -> list[str]:
    """The names above that this TRL / transformers / torch does not have (empty on the tested versions)."""
    missing = []
    for module, path in REQUIRED:
        try:
            _resolve(module, path)
        except (ImportError, AttributeError):
            missing.append(f"{module}.{path}")
    try:
        from trl import SFTTrainer

        init = inspect.getsource(SFTTrainer.__init__)
    except (ImportError, OSError, TypeError):
        init = ""
    missing += [f"trl.SFTTrainer.{name}" for name in SFT_TRAINER_STATE if f"self.{name} =" not in init]
    return missing


MISSING: list[str] = find_missing()


def _lookup(module: str, path: str):
    """The value, or None where it is missing (then it is in MISSING and the fast path is off)."""
    try:
        return _resolve(module, path)
    except (ImportError, AttributeError):
        return None


# --- TRL's chunked log-prob kernels: the per-element math of lm_head.LogProbsWithGradient -------------------------
LOGPROB_BLOCK_SIZE = _lookup(_KERNELS, "_BLOCK_SIZE")
addmm_fp32 = _lookup(_KERNELS, "_addmm_fp32")
use_triton = _lookup(_KERNELS, "_use_triton")
forward_kernel = _lookup(_KERNELS, "_forward_kernel")
forward_tile = _lookup(_KERNELS, "_forward_tile")
backward_kernel = _lookup(_KERNELS, "_backward_kernel")
backward_tile = _lookup(_KERNELS, "_backward_tile")

# --- TRL's fused LM head: its chunk size, and the output of the forward `add_fused_lm_head` patches onto a model ----
TRL_LOGPROB_CHUNK_SIZE = _lookup(_TRL_UTILS, "_CHUNKED_LOGPROB_CHUNK_SIZE")
FusedCausalLMOutput = _lookup(_TRL_UTILS, "FusedCausalLMOutput")


# --- SFTTrainer ------------------------------------------------------------------------------------------------------
def prepare_sft_dataset(dataset, tokenizer, training_args, name: str = "dataset"):
    """SFTTrainer's own dataset preparation (template, tokenization, completion mask, labels) without building a
    model or a trainer: `_prepare_dataset` reads only the tokenizer, the completion-only switch and the training
    chat template from the trainer (tests/paraphrx/test_label_mask.py checks the result equals a real trainer's)."""
    from trl import SFTTrainer

    trainer = SFTTrainer.__new__(SFTTrainer)
    trainer._tokenizer = tokenizer
    trainer.completion_only_loss = (
        training_args.completion_only_loss
        if training_args.completion_only_loss is not None
        else {"prompt", "completion"} <= set(dataset.column_names)
    )
    trainer.chat_template = None
    return trainer._prepare_dataset(dataset, tokenizer, training_args, False, None, name)


# The signature of SFTTrainer's dataset preparation that `PreparationHook` overrides (checked at import).
PREPARE_DATASET_PARAMETERS = (
    "self",
    "dataset",
    "processing_class",
    "args",
    "packing",
    "formatting_func",
    "dataset_name",
)


def _prepare_dataset_as_expected() -> bool:
    try:
        from trl import SFTTrainer

        return tuple(inspect.signature(SFTTrainer._prepare_dataset).parameters) == PREPARE_DATASET_PARAMETERS
    except (ImportError, AttributeError, TypeError, ValueError):
        return False


class PreparationHook:
    """SFTTrainer mixin: every dataset SFTTrainer prepares (in `__init__` and in `evaluate`) goes through
    `self.prepare_rows(prepare, dataset, args, packing, formatting_func, dataset_name)`, where `prepare(rows,
    args=..., packing=...)` is SFTTrainer's own preparation of `rows` with the call's arguments unless given others.
    Where this TRL's `_prepare_dataset` is missing or takes other parameters, the mixin changes nothing."""

    if _prepare_dataset_as_expected():

        def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
            own = super()._prepare_dataset

            def prepare(rows, args=args, packing=packing):
                return own(rows, processing_class, args, packing, formatting_func, dataset_name)

            return self.prepare_rows(prepare, dataset, args, packing, formatting_func, dataset_name)

    def prepare_rows(self, prepare, dataset, args, packing, formatting_func, dataset_name):
        return prepare(dataset)


def step_metrics(trainer) -> dict[str, dict[str, list]]:
    """SFTTrainer's metrics of the steps since its last log, by mode (`train`, `eval`): lists it averages at a log."""
    return trainer._metrics


def train_tokens(trainer):
    """The tokens SFTTrainer has counted so far (its `num_tokens` metric): an int, or a device tensor on the fast
    path until the next log; 0 for a trainer that counts none."""
    return getattr(trainer, "_total_train_tokens", 0)


def set_train_tokens(trainer, count) -> None:
    trainer._total_train_tokens = count


def tensor_parallel_size(trainer) -> int:
    """How many ranks share one batch: SFTTrainer divides its gathered token count by it."""
    return trainer._tp_size


# The Trainer method that clips gradients once per optimizer step; module_walks.py replaces it on a trainer.
CLIP_GRAD_NORM = "_clip_grad_norm"


# --- Trainer's resume: what resume.py overrides and reads so a resumed run ends as the uninterrupted one would. Not
# optional like the fast path's names: without them a resumed run would silently differ, so a transformers that
# lacks them fails at import, naming what is missing (pyproject.toml bounds the versions).
RESUME_METHODS = ("_load_from_checkpoint", "_load_best_model", "_load_callback_state")


def require_resume_internals() -> None:
    from transformers import Trainer

    missing = [name for name in RESUME_METHODS if not hasattr(Trainer, name)]
    if not missing and "_total_loss_scalar" not in inspect.getsource(Trainer._inner_training_loop):
        missing = ["_total_loss_scalar"]
    if missing:
        import transformers

        raise ImportError(
            f"paraphrx: transformers {transformers.__version__} has no Trainer.{missing[0]}; "
            "update paraphrx/resume.py for this version"
        )


def run_loss_total(trainer) -> float:
    """The sum of the training losses of the current `train()` call (Trainer's running total)."""
    return getattr(trainer, "_total_loss_scalar", 0.0)


# --- transformers and torch ------------------------------------------------------------------------------------------
def packed_sequence_check():
    """(module, name) of transformers' check whether `position_ids` hold several sequences (fast_path.py)."""
    from transformers import masking_utils

    return masking_utils, "find_packed_sequence_indices"


def block_mask_builder():
    """(module, name) of the function transformers' flex-attention masks call to build a BlockMask (torch's
    `create_block_mask`, which transformers compiles with static lengths)."""
    from transformers import masking_utils

    return masking_utils, "create_block_mask"


def mask_builders(model: nn.Module):
    """(the modeling module of `model`, its causal mask builder) where that module also imports the sliding-window
    one under the name `create_sliding_window_causal_mask` (Gemma-2 and the other models with sliding layers); None
    otherwise. Its layers get `causal_mask_mapping[layer_type]`, built by these two."""
    import sys

    module = sys.modules.get(type(model).__module__)
    causal = getattr(module, "create_causal_mask", None)
    if causal is None or not callable(getattr(module, SLIDING_MASK_BUILDER, None)):
        return None
    return module, causal


SLIDING_MASK_BUILDER = "create_sliding_window_causal_mask"


def inductor_default_cache_dir() -> str | None:
    """inductor's own default TORCHINDUCTOR_CACHE_DIR (/tmp/torchinductor_$USER), which it also writes into the
    environment as soon as transformers' trainer is imported; None where this torch has no such function."""
    default = _lookup("torch._inductor.runtime.cache_dir_utils", "default_cache_dir")
    return default() if default is not None else None


def inductor_eager_rounding() -> dict | None:
    """torch.compile options under which inductor's fused kernels round to the model dtype wherever eager does
    (`emulate_precision_casts`, an inductor config key, not a public API), or None where this torch lacks it (the
    decode engine's compiled kernels, eval/engine.py, then stay eager)."""
    from torch._inductor import config

    return {"emulate_precision_casts": True} if hasattr(config, "emulate_precision_casts") else None


@contextmanager
def recompile_limit_at_least(limit: int) -> Iterator[None]:
    """dynamo's process-wide limit of graphs per compiled function, raised to `limit` until the context ends."""
    import torch._dynamo

    config = torch._dynamo.config
    with patch_attribute(config, "recompile_limit", max(config.recompile_limit, limit)):
        yield


@contextmanager
def floats_specialized() -> Iterator[None]:
    """dynamo keeps Python floats as constants in a `dynamic=True` graph (process-wide, until the context ends):
    otherwise Gemma-2's soft-caps become graph inputs, which flex attention's lowering rejects."""
    import torch._dynamo

    with patch_attribute(torch._dynamo.config, "specialize_float", True):
        yield


@contextmanager
def compiled(module: nn.Module, **options) -> Iterator[nn.Module]:
    """`module.compile(**options)` until the context ends: torch has no public way to undo it, so the compiled call it
    records on the module is dropped again."""
    module.compile(**options)
    try:
        yield module
    finally:
        vars(module).pop("_compiled_call_impl", None)
