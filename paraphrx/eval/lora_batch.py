"""Several LoRA adapters in one batch: every row picks its adapter (or none, the base model) with a mask.

For one projection W and adapters i = 1..n (A_i [r_i, in], B_i [out, r_i], scaling s_i), stack
A_cat = [A_1; ...; A_n] [R, in] and B_cat = [B_1 | ... | B_n] [out, R]. A row whose mask [R] holds s_i on its
adapter's block (all zeros for the base) gets exactly its own update:

    y = x W^T + ((x A_cat^T) * mask) B_cat^T

two skinny matmuls for every adapter at once, so rows of all models share one read of W. Projections that run as
one matmul (q|k|v, gate|up) stack their modules' A_cat's into one A ([k*R, in]: one matmul for the k modules),
and each module's B_cat then multiplies only its own block of the masked x A^T, writing its columns of the
update: no block-diagonal zeros are multiplied (an adapter that leaves a module alone still has zero columns
in that module's B_cat).

With float32 adapter weights the update is computed as PEFT computes it (PEFT keeps adapter weights in fp32): in
float32, then added to the base output as PEFT's layer does: bitsandbytes 4-bit layers round it to the output
dtype before the add, plain layers add in fp32 and round the sum. The one difference, the scale applied before
B_cat instead of after, is a float32 rounding and keeps the [rows, out] update to two passes. With adapter weights
in the model dtype each module's update is one `addmm` into the base output (fewer kernels and bytes; in bf16 it
drifts from PEFT's).

Adapters are read from their folders as PEFT writes them (`LoraConfig.from_pretrained`, `load_peft_weights`, keys
`base_model.model.<module>.lora_A.weight`). Anything this formula does not compute is refused with one line
naming the folder and the field or tensor: DoRA, LoRA bias, modules_to_save, embedding or LM-head adapters,
rank/alpha patterns and every other LoRA variant, i.e. any config field that differs from its LoraConfig default
except the ones listed in `COMPUTED_FIELDS` and `LOADING_FIELDS`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# Config fields the formula above computes.
COMPUTED_FIELDS = {
    "r",
    "lora_alpha",
    "use_rslora",
    "target_modules",
    "exclude_modules",
    "layers_to_transform",
    "layers_pattern",
}
# Fields that only describe the folder, or act at training time (dropout, initialisation), not on the forward.
LOADING_FIELDS = {
    "base_model_name_or_path",
    "revision",
    "peft_type",
    "task_type",
    "inference_mode",
    "auto_mapping",
    "peft_version",
    "lora_dropout",
    "init_lora_weights",
    "loftq_config",
    "eva_config",
    "corda_config",
    "lora_ga_config",
    "runtime_config",
}
KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight$")


class UnsupportedAdapter(ValueError):
    """An adapter the batched formula cannot reproduce; the message is one line naming the folder."""


@dataclass
class LoraAdapter:
    """One adapter folder: its (A, B) per module name (`model.layers.0.self_attn.q_proj`) and its scaling."""

    name: str
    path: Path
    rank: int
    scaling: float
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]


def read_lora_adapter(name: str, path: str | Path, module_names: set[str]) -> LoraAdapter:
    """Read and check a PEFT LoRA folder; `module_names` are the modules the batched formula serves."""
    from peft import LoraConfig
    from peft.utils import load_peft_weights

    path = Path(path)
    config = LoraConfig.from_pretrained(str(path))
    for field in dataclasses.fields(LoraConfig):
        if field.name in COMPUTED_FIELDS | LOADING_FIELDS or not field.init:
            continue
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        value = getattr(config, field.name, default)
        if value != default and not (value in (None, {}, []) and default in (None, {}, [])):
            raise UnsupportedAdapter(
                f"{path / 'adapter_config.json'}: field {field.name!r} = {value!r} is not "
                "supported by the batched LoRA engine"
            )
    scaling = config.lora_alpha / (math.sqrt(config.r) if config.use_rslora else config.r)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_peft_weights(str(path), device="cpu").items():
        match = KEY.match(key)
        if match is None or match["module"] not in module_names:
            raise UnsupportedAdapter(
                f"{path}: tensor {key!r} is not a LoRA A/B weight of a supported projection (q/k/v/o/gate/up/down_proj)"
            )
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    tensors = {}
    for module, pair in parts.items():
        a, b = pair.get("lora_A"), pair.get("lora_B")
        if a is None or b is None or a.shape[0] != config.r or b.shape[1] != config.r:
            raise UnsupportedAdapter(f"{path}: module {module!r} lacks lora_A/lora_B of rank r={config.r}")
        tensors[module] = (a.float(), b.float())
    if not tensors:
        raise UnsupportedAdapter(f"{path}: no LoRA weights")
    return LoraAdapter(name=name, path=path, rank=config.r, scaling=scaling, tensors=tensors)


@dataclass
class StackedLora:
    """The stacked update of one projection run as one matmul whose output concatenates k modules' outputs: A
    [k*R, in] (module i's A_cat in rows i*R..(i+1)*R) and each module's B_cat [out_i, R]."""

    a: torch.Tensor
    b: tuple[torch.Tensor, ...]


def stack_lora(
    adapters: list[LoraAdapter],
    modules: list[str],
    in_features: int,
    out_features: list[int],
    dtype: torch.dtype,
    device,
) -> StackedLora | None:
    """Stack every adapter's update of `modules` (run as one matmul whose output concatenates theirs). An adapter
    that does not touch a module contributes zeros there. None when no adapter touches any of them."""
    if not any(m in adapter.tensors for adapter in adapters for m in modules):
        return None
    total = sum(adapter.rank for adapter in adapters)
    a = torch.zeros(len(modules) * total, in_features)
    bs = [torch.zeros(out, total) for out in out_features]
    for k, module in enumerate(modules):
        col = 0
        for adapter in adapters:
            if module in adapter.tensors:
                lora_a, lora_b = adapter.tensors[module]
                a[k * total + col : k * total + col + adapter.rank] = lora_a
                bs[k][:, col : col + adapter.rank] = lora_b
            col += adapter.rank
    return StackedLora(a=a.to(device=device, dtype=dtype), b=tuple(b.to(device=device, dtype=dtype) for b in bs))


def adapter_masks(adapters: list[LoraAdapter], dtype: torch.dtype, device) -> torch.Tensor:
    """[1 + n, R]: row 0 selects nothing (the base), row 1 + i holds adapter i's scaling on its block."""
    masks = torch.zeros(1 + len(adapters), sum(adapter.rank for adapter in adapters))
    col = 0
    for i, adapter in enumerate(adapters):
        masks[1 + i, col : col + adapter.rank] = adapter.scaling
        col += adapter.rank
    return masks.to(device=device, dtype=dtype)


def add_update(y: torch.Tensor, update: torch.Tensor, round_before_add: bool) -> torch.Tensor:
    """The float32 update added to the base output as PEFT's layer adds it: bitsandbytes 4-bit layers round the
    update to y's dtype first, plain layers add in float32 and round the sum."""
    return y + update.to(y.dtype) if round_before_add else (y + update).to(y.dtype)


def apply_lora(
    y: torch.Tensor,
    x: torch.Tensor,
    lora: StackedLora | None,
    mask: torch.Tensor,
    round_before_add: bool = False,
    add: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor] = add_update,
) -> torch.Tensor:
    """The projection's base output `y` [N, out] plus each row's own adapter update (see the module doc); `mask`
    [N, R] is each row's adapter mask (`adapter_masks`), the same for every module of a fused projection;
    `round_before_add` for a base that PEFT wraps in its bitsandbytes layer; `add` computes `add_update` (the
    engine passes a compiled one). Adapter weights in y's dtype add the update into `y` in place."""
    if lora is None:
        return y
    n = x.shape[0]
    u = torch.nn.functional.linear(x.to(lora.a.dtype), lora.a).view(n, len(lora.b), -1) * mask.unsqueeze(1)
    fused = lora.a.dtype == y.dtype
    # float32: the modules' updates side by side in one [N, out] tensor, then one pass adds them to y.
    update = y if fused else torch.empty(y.shape, dtype=lora.a.dtype, device=y.device)
    col = 0
    for k, b in enumerate(lora.b):
        block = update[:, col : col + b.shape[0]]
        if fused:
            block.addmm_(u[:, k], b.t())
        else:
            torch.mm(u[:, k], b.t(), out=block)
        col += b.shape[0]
    return y if fused else add(y, update, round_before_add)
