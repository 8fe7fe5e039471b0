"""Several LoRA adapters in one batch: every row gets its own adapter's update (or none, the base model's rows).

For one projection W and adapters i = 1..n (A_i [r, in], B_i [out, r], scaling s_i):

    u = x [A_1; ...; A_n]^T                  one matmul for every row and adapter ("shrink": [N, n*r], cheap)
    g = u[pick] * s                          each adapter's group of rows, only its own block of u: [n, C, r]
    update = g B^T                           one batched matmul over the groups ("expand": [n, C, out])
    y = x W^T + update[back]                 back [N]: each row's place among the n*C results (a zero row for the base)

`pick` [n, C] lists, for adapter i, the rows that use it (C, the capacity, at least the largest group; unused places
repeat a row, their results never read), so the expand, whose output is as wide as the projection, multiplies each
row by its own adapter only, and rows of every model share one read of W. Projections run as one matmul (q|k|v,
gate|up) stack their modules' A's (one shrink for the k modules) and each module's B writes its own columns of the
update. Ranks below the largest are padded with zero rows, and an adapter that leaves a module alone has zeros there.
On CUDA the pick, the expand and the add of a float32 update are one Triton kernel per module (`lora_fused`), which
adds into y without writing the update.

With float32 adapter weights the update is computed as PEFT computes it (PEFT keeps adapter weights in fp32): in
float32, then added to the base output as PEFT's layer does: bitsandbytes 4-bit layers round it to the output dtype
before the add, plain layers add in fp32 and round the sum. The one difference, the scale applied before B instead
of after, is a float32 rounding. On a bf16 model the float32 shrink runs on the tensor cores: A is split into three
bf16 parts whose sum is A to float32 precision (`split_bf16`), every product of a bf16 input and a bf16 part is
exact in float32, and the GEMM accumulates in float32, so the sum of the three GEMMs is x A^T in float32 (Hopper's
tensor cores truncate their float32 adds: about ten times a float32 GEMM's error, ~1e-5 relative, far below the
bf16 rounding the update then gets). With adapter weights in the model dtype (bf16) both matmuls run in bf16 and
the rounded update is added to the base output, as training's bf16 autocast computes PEFT's layer.

The groups are built on the host (`lora_groups`) from each row's model: per prefill batch, and in the decode engine
once per chunk of steps into buffers its CUDA graphs read, with a capacity from a few sizes (`capacity_for`).

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
import torch.nn.functional as F

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
    """The adapters' update of one projection run as one matmul whose output concatenates k modules' outputs:
    `a` [parts * n * k * r, in] (rows by part, adapter, module, rank: the A's, or `parts` bf16 parts of the float32
    A's, `split_bf16`), `b` one [n, r, out_j] per module (B^T), `scaling` [n, 1, 1]; r is the largest rank (smaller
    ones padded with zeros)."""

    a: torch.Tensor
    b: tuple[torch.Tensor, ...]
    scaling: torch.Tensor
    parts: int = 1

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the update is computed in."""
        return self.b[0].dtype


def split_bf16(w: torch.Tensor) -> torch.Tensor:
    """[3, ...] bf16 parts of a float32 tensor, hi + mid + lo = w to float32 precision (each part holds the next 8
    bits of the significand; bf16 has float32's exponent range)."""
    hi = w.bfloat16()
    rest = w - hi.float()
    mid = rest.bfloat16()
    return torch.stack([hi, mid, (rest - mid.float()).bfloat16()])


def stack_lora(
    adapters: list[LoraAdapter],
    modules: list[str],
    in_features: int,
    out_features: list[int],
    dtype: torch.dtype,
    device,
    split: bool = False,
) -> StackedLora | None:
    """Stack every adapter's update of `modules` (run as one matmul whose output concatenates theirs). An adapter
    that does not touch a module contributes zeros there. `split`: the float32 A as three bf16 parts for the tensor
    cores (see the module doc). None when no adapter touches any of them."""
    if not any(m in adapter.tensors for adapter in adapters for m in modules):
        return None
    n, r = len(adapters), max(adapter.rank for adapter in adapters)
    a = torch.zeros(n, len(modules), r, in_features)
    bs = [torch.zeros(n, r, out) for out in out_features]
    for i, adapter in enumerate(adapters):
        for k, module in enumerate(modules):
            if module in adapter.tensors:
                lora_a, lora_b = adapter.tensors[module]
                a[i, k, : adapter.rank] = lora_a
                bs[k][i, : adapter.rank] = lora_b.t()
    a = a.view(-1, in_features)
    scaling = torch.tensor([adapter.scaling for adapter in adapters]).view(n, 1, 1)
    return StackedLora(
        a=split_bf16(a.to(device)).flatten(0, 1) if split else a.to(device=device, dtype=dtype),
        b=tuple(b.to(device=device, dtype=dtype) for b in bs),
        scaling=scaling.to(device=device, dtype=dtype),
        parts=3 if split else 1,
    )


@dataclass
class LoraGroups:
    """Which rows of a batch of N each adapter updates: `pick` [g, C] (row j of adapter i as j * n + i, n the
    engine's adapters: a row of the shrink's [N * n, r] blocks; unused places hold a valid index, their results
    never read), `back` [N] each row's place among the g*C results (g*C, a zero row, for the base's rows),
    `adapters` the adapters of the g groups (None: all n, in order)."""

    pick: torch.Tensor
    back: torch.Tensor
    adapters: torch.Tensor | None = None

    def to(self, device) -> LoraGroups:
        """On `device`, without waiting (see `host_copy_source`)."""

        def move(t):
            return None if t is None else host_copy_source(t, device).to(device, non_blocking=True)

        return LoraGroups(move(self.pick), move(self.back), move(self.adapters))


def host_copy_source(t: torch.Tensor, device) -> torch.Tensor:
    """A host tensor to copy to `device` with `non_blocking=True`: pinned for CUDA (a copy from pageable memory waits
    for the GPU's queue to drain)."""
    return t.pin_memory() if torch.device(device).type == "cuda" else t


def lora_groups(
    models: list[int], n_adapters: int, capacity: int | None = None, repeat: int = 1, present_only: bool = False
) -> LoraGroups:
    """The groups (on the CPU) of a batch whose entry j (model index: 0 the base, 1 + i adapter i) covers rows
    j*repeat .. (j+1)*repeat - 1 (a prompt's tokens in a prefill). `capacity`: the groups' width (default: the largest
    group); `present_only`: one group per adapter the batch uses, not one per adapter (a prefill, computed eagerly)."""
    index = torch.tensor(models, dtype=torch.long)
    used = [i for i in range(n_adapters) if not present_only or bool((index == i + 1).any())]
    members = [(index == i + 1).nonzero().flatten() for i in used]
    largest = max([len(m) * repeat for m in members] + [1])
    capacity = capacity or largest
    if largest > capacity:
        raise ValueError(f"a group of {largest} rows does not fit capacity {capacity}")
    pick = torch.tensor(used, dtype=torch.long).view(-1, 1).repeat(1, capacity)  # row 0 of each adapter: unused places
    back = torch.full((len(models) * repeat,), len(used) * capacity, dtype=torch.long)
    offsets = torch.arange(repeat)
    for g, (adapter, entries) in enumerate(zip(used, members)):
        at = (entries[:, None] * repeat + offsets).flatten()
        pick[g, : len(at)] = at * n_adapters + adapter
        back[at] = g * capacity + torch.arange(len(at))
    return LoraGroups(pick, back, torch.tensor(used, dtype=torch.long) if present_only else None)


def capacity_for(need: int, width: int) -> int:
    """The group width a decode step of `width` rows is captured with: the smallest of 8, 12, 16, 24, 32, 48, ...
    (a power of two or 1.5 times one) holding `need` rows, at most `width`. Few sizes: each is one CUDA graph."""
    size = 8
    while size < need:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return min(size, width)


def mm_float32(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [N, in] (bf16) times w [M, in]^T (bf16), accumulated and returned in float32: cuBLAS's bf16 GEMM with a
    float32 output on CUDA; elsewhere the same products in a float32 matmul."""
    if x.is_cuda:
        return torch.mm(x, w.t(), out_dtype=torch.float32)
    return torch.mm(x.float(), w.float().t())


def cuda_float32_output_available(device) -> bool:
    """Whether this torch's CUDA bf16 GEMM can return float32 (`torch.mm(..., out_dtype=)`, torch >= 2.8)."""
    try:
        ones = torch.ones(2, 2, dtype=torch.bfloat16, device=device)
        return mm_float32(ones, ones).dtype == torch.float32
    except (RuntimeError, TypeError):
        return False


def pick_rows(u: torch.Tensor, pick: torch.Tensor, scaling: torch.Tensor) -> torch.Tensor:
    """The groups' rows of the shrink u [N, parts, n, k*r] (its parts summed in order: hi + mid + lo), scaled:
    [g, C, k*r]."""
    total = u[:, 0]
    for part in range(1, u.shape[1]):
        total = total + u[:, part]
    g, capacity = pick.shape
    return total.reshape(-1, total.shape[-1])[pick.view(-1)].view(g, capacity, -1) * scaling


def add_update(y: torch.Tensor, update: torch.Tensor, back: torch.Tensor, round_before_add: bool) -> torch.Tensor:
    """Each row's update (`update[back]`) added to the base output as PEFT's layer adds it: bitsandbytes 4-bit
    layers (and an update computed in y's dtype) round the update to y's dtype first, plain layers add in float32
    and round the sum."""
    mine = update[back]
    return y + mine.to(y.dtype) if round_before_add else (y + mine).to(y.dtype)


def apply_lora(
    y: torch.Tensor,
    x: torch.Tensor,
    lora: StackedLora | None,
    groups: LoraGroups,
    round_before_add: bool = False,
    add: Callable = add_update,
    pick: Callable = pick_rows,
    expand_add: Callable | None = None,
) -> torch.Tensor:
    """The projection's base output `y` [N, out] plus each row's own adapter update (see the module doc);
    `round_before_add` for a base that PEFT wraps in its bitsandbytes layer; `add` and `pick` compute `add_update`
    and `pick_rows` (the engine passes compiled ones); `expand_add`, when given, does a float32 update's pick, expand
    and add in one step, into `y` (`lora_fused.expand_add` on CUDA)."""
    if lora is None or groups.pick.shape[0] == 0:  # no adapter touches it, or only the base's rows
        return y
    b, scaling = lora.b, lora.scaling
    if groups.adapters is not None:
        b, scaling = tuple(m[groups.adapters] for m in b), scaling[groups.adapters]
    n_all, rank = lora.scaling.shape[0], b[0].shape[1]
    if lora.parts > 1:
        u = mm_float32(x, lora.a)
    else:
        u = F.linear(x.to(lora.a.dtype), lora.a)
    round_first = round_before_add or lora.dtype == y.dtype
    if expand_add is not None and lora.dtype == torch.float32:
        return expand_add(y, u, lora.b, lora.scaling, groups.pick, groups.back, lora.parts, round_first)
    # [N, parts, n, k * r]: adapter i's block of row j is row j * n + i of the summed parts
    g = pick(u.view(x.shape[0], lora.parts, n_all, len(b) * rank), groups.pick, scaling)
    groups_n, capacity = groups.pick.shape
    # the modules' updates side by side, one row per group place and a zero row last (the base's rows read it)
    update = torch.empty(groups_n * capacity + 1, y.shape[1], dtype=lora.dtype, device=y.device)
    update[-1].zero_()
    col = 0
    for m, module_b in enumerate(b):
        width = module_b.shape[2]
        out = update[:-1, col : col + width].view(groups_n, capacity, width)
        torch.bmm(g[..., m * rank : (m + 1) * rank], module_b, out=out)
        col += width
    return add(y, update, groups.back, round_first)
