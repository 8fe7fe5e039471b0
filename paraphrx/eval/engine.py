"""Greedy decoding of Gemma-2 for the base model and any number of LoRA adapters at once, at the GPU's speed.

HF `generate` spends ~40 ms of host work per decode step whatever the batch, and a 4-bit base dequantizes every
weight on every step, so the GPU mostly waits. This engine, built from a loaded `Gemma2ForCausalLM`:

- **dequantizes an NF4 base once** (`paraphrx.modeling.dequantize_frozen_base`, bitsandbytes' own dequantization:
  the NF4-rounded values the adapters trained on) and fuses q|k|v and gate|up into one matmul each;
- runs **every model in one batch**: the rows are grouped by adapter and each group multiplies only its own
  adapter (`lora_batch.py`: batched matmuls over the groups; on CUDA the float32 update's expand and add are one
  Triton kernel per module, `lora_fused.py`), so the base and all adapters share each weight read;
- keeps a **static KV cache** [layers, slots, kv_heads, max_len, head_dim] with per-slot positions, so every decode
  step has static shapes; on CUDA each row's attention reads only its own keys (flex decoding, `decode_attention`),
  elsewhere every row attends over the first L cache columns (L from a few buckets, set by the longest live row)
  with a per-slot valid-length mask;
- **continuous batching**: one queue of (model, prompt) requests; every `chunk_steps` decode steps the host reads
  the new tokens once, retires finished rows and prefills queued prompts into the freed slots (length-sorted
  batches, the models taking turns so the adapters' groups stay even); when the queue runs dry the live rows are
  compacted into fewer slots;
- on CUDA, each decode step of a (slots, L, adapter group width) shape is **captured once as a CUDA graph** and
  replayed (no host work per kernel, no `.item()` inside a step); eager on the CPU;
- on CUDA, the **elementwise work between the matmuls is compiled** (`decoder_kernels`: torch.compile, one fused
  kernel per step such as an fp32 RMSNorm with the residual add before it, or soft-cap + mask + fp32 softmax)
  with eager's roundings kept; eager on the CPU.

The arithmetic follows `transformers.models.gemma2.modeling_gemma2` op for op (embedding scaled in the model dtype,
RMSNorm in fp32 as x * (1 + w), RoPE from the model's own rotary module, `query_pre_attn_scalar`, attention logits
soft-capped before the mask, softmax in fp32, sliding window on the model's `sliding_attention` layers, GeGLU, final
norm, logits soft-capped in the model dtype), and the LoRA update as PEFT computes it (`lora_batch.py`), so in
float32 the greedy text equals HF's one prompt at a time, and in bf16 on a bf16 base the logits are PEFT's (on
CUDA up to the float32 shrink's tensor-core rounding, see lora_batch).
Greedy stops at any id of `generation_config.eos_token_id`, at `max_new_tokens`, or at a request's own limit.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from loguru import logger

from paraphrx import library_internals as internals
from paraphrx.eval import decode_attention, lora_fused
from paraphrx.eval.generation import BASE
from paraphrx.eval.lora_batch import (
    LoraAdapter,
    LoraGroups,
    StackedLora,
    UnsupportedAdapter,
    add_update,
    apply_lora,
    capacity_for,
    cuda_float32_output_available,
    host_copy_source,
    lora_groups,
    pick_rows,
    read_lora_adapter,
    stack_lora,
)

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


class UnsupportedModel(ValueError):
    """A model or adapter the engine does not compute exactly; the message is one line."""


@dataclass
class Request:
    """One answer to generate: `model` is BASE or an adapter's name; `max_new_tokens` caps this answer."""

    model: str
    prompt_ids: list[int]
    max_new_tokens: int
    key: object = None  # the caller's handle (e.g. the prompt text)


@dataclass
class _Row:
    request: Request
    tokens: list[int] = field(default_factory=list)
    fresh: bool = True  # prefilled since the last read: its first token is in `first`, not yet read


def unsupported_reason(model, adapters: dict[str, Path]) -> str | None:
    """Why the engine cannot generate for `model` (+ `adapters`) exactly, or None when it can."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "gemma2" or not hasattr(model, "lm_head"):
        return f"{type(model).__name__} is not a plain Gemma2ForCausalLM"
    if getattr(model, "is_loaded_in_8bit", False):
        return "8-bit bases are not supported (4-bit NF4/FP4 and float bases are)"
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope != "default":
        return f"rope_type {rope!r} is not supported"
    quant = getattr(config, "quantization_config", None)
    compute = getattr(quant, "bnb_4bit_compute_dtype", None) if quant is not None else None
    if compute is not None and compute != model.get_input_embeddings().weight.dtype:
        return f"4-bit compute dtype {compute} differs from the model dtype {model.get_input_embeddings().weight.dtype}"
    modules = projection_modules(model)
    for name, path in adapters.items():
        try:
            read_lora_adapter(name, path, modules)
        except UnsupportedAdapter as err:
            return str(err)
    return None


def projection_modules(model) -> set[str]:
    """The names PEFT gives the 7 projections of every decoder layer ('model.layers.3.self_attn.q_proj', ...)."""
    return {
        f"model.layers.{i}.{group}.{proj}"
        for i in range(len(model.model.layers))
        for group, projs in (("self_attn", ATTENTION), ("mlp", MLP))
        for proj in projs
    }


def rms_norm(x: torch.Tensor, weight_plus_one: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma2RMSNorm: normalised in fp32, times (1 + w) in fp32, back to the input dtype."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight_plus_one).type_as(x)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rotary_pos_emb` of one tensor: x * cos + rotate_half(x) * sin."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else torch.tanh(x / cap) * cap


@dataclass(frozen=True)
class Kernels:
    """The elementwise work between the decoder's matmuls, as functions of tensors only (`decoder_kernels`)."""

    norm: Callable  # (x, w) -> rms_norm(x, w)
    residual_norm: Callable  # (h, y, w, w_next) -> (h + rms_norm(y, w), rms_norm of that by w_next)
    rotate: Callable  # (x, cos, sin) -> rotate(x, cos, sin)
    probs: Callable  # (scores q.k^T, additive mask) -> attention weights
    glu: Callable  # (gate, up) -> act(gate) * up
    greedy: Callable  # (logits) -> argmax of the soft-capped logits
    lora_add: Callable  # lora_batch.add_update
    lora_pick: Callable  # lora_batch.pick_rows


def decoder_kernels(
    eps: float, scaling: float, attn_cap: float | None, final_cap: float | None, act: Callable, compiled: bool
) -> Kernels:
    """Gemma-2's elementwise steps with the model's constants bound, eager or (`compiled`) each one fused kernel.

    Eager, each step is 2 to 10 kernels with a pass over memory each (an fp32 RMSNorm alone is 8). Compiled:
    torch.compile, inductor's default mode (no CUDA graphs of its own: the engine captures whole steps), dynamic
    shapes (one graph serves the slot counts and KV lengths of a dtype and tensor rank; a dtype, the prefill's 5-D
    scores or a single row compile another), and inductor's precision-cast emulation
    (`library_internals.inductor_eager_rounding`), so a fused kernel still rounds to the model dtype wherever eager
    does; without it, intermediates stay in fp32 and bf16 results change, argmax ties included (a torch without that
    option gets the eager kernels). The constants are closure constants: a float argument would be a symbolic input
    under dynamic shapes, and inductor then drops the rounding around it (bf16 attention weights differed). Every
    engine of a process shares dynamo's cache of each kernel: past its recompile limit a kernel runs eagerly (same
    values, slower) rather than failing, hence no `fullgraph`."""

    def norm(x, w):
        return rms_norm(x, w, eps)

    def residual_norm(h, y, w, w_next):
        h = h + rms_norm(y, w, eps)
        return h, rms_norm(h, w_next, eps)

    def probs(scores, mask):
        """Eager Gemma-2 attention weights: scaled, soft-capped before the mask, softmax in fp32, back to the
        scores' dtype."""
        return torch.softmax(soft_cap(scores * scaling, attn_cap) + mask, dim=-1, dtype=torch.float32).to(scores.dtype)

    def glu(gate, up):
        return act(gate) * up

    def greedy(logits):
        return soft_cap(logits, final_cap).argmax(dim=-1)

    steps = dict(
        norm=norm,
        residual_norm=residual_norm,
        rotate=rotate,
        probs=probs,
        glu=glu,
        greedy=greedy,
        lora_add=add_update,
        lora_pick=pick_rows,
    )
    options = internals.inductor_eager_rounding() if compiled else None
    if compiled and options is None:
        logger.warning("decode engine: this torch's inductor cannot keep eager's roundings; eager kernels")
    if options is not None:
        steps = {k: torch.compile(f, dynamic=True, options=options) for k, f in steps.items()}
    return Kernels(**steps)


@dataclass
class _Projection:
    weight: torch.Tensor  # [out, in]
    lora: StackedLora | None
    round_before_add: bool  # PEFT's bitsandbytes layers round the update to the output dtype before adding it
    kernels: Kernels  # lora_add and lora_pick, eager or compiled
    expand_add: Callable | None  # lora_fused.expand_add, or None: the update in three steps

    def __call__(self, x: torch.Tensor, groups: LoraGroups | None) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if groups is None:
            return y
        ops = self.kernels
        return apply_lora(y, x, self.lora, groups, self.round_before_add, ops.lora_add, ops.lora_pick, self.expand_add)


@dataclass
class _Layer:
    qkv: _Projection
    o: _Projection
    gate_up: _Projection
    down: _Projection
    norms: tuple[torch.Tensor, ...]  # (1 + w) in fp32: input, post-attention, pre-feedforward, post-feedforward
    sliding: bool


def _fuse(modules: list[torch.nn.Linear]) -> torch.Tensor:
    """One weight for several projections of the same input; the modules are pointed at slices of it (no copy)."""
    fused = torch.cat([m.weight.data for m in modules])
    row = 0
    for m in modules:
        m.weight = torch.nn.Parameter(fused[row : row + m.out_features], requires_grad=False)
        row += m.out_features
    return fused


class GemmaDecodeEngine:
    """Built once from a loaded Gemma-2 (see the module doc); `generate` answers any mix of models' requests.

    `max_slots` caps the rows decoded together (default: as many as fit in free GPU memory, at most 512; 64 on the
    CPU), `chunk_steps` is the number of decode steps between two host reads, `kv_bucket` the step between KV-length
    buckets, `prefill_tokens` the padded prompt tokens per prefill batch, `cuda_graphs` replays captured decode steps
    on CUDA, `continuous` refills freed slots at once (False: a new batch only when all rows of the last finished),
    `exact_lora` computes the LoRA update as PEFT does (float32; False: in the model dtype, as training's autocast),
    `compile_kernels` fuses the elementwise steps into compiled kernels (`decoder_kernels`; default: on CUDA, eager
    on the CPU), `flex_attention` has each decode row read only its own keys (`decode_attention.py`; default: on
    CUDA; off, every row reads up to the longest live row's bucketed length), `fused_lora` does the float32 LoRA
    update's pick, expand and add in one Triton kernel per module (`lora_fused.py`; default: on CUDA with Triton)."""

    def __init__(
        self,
        model,
        adapters: dict[str, str | Path] | None = None,
        *,
        max_slots: int | None = None,
        chunk_steps: int = 32,
        kv_bucket: int = 64,
        prefill_tokens: int = 8192,
        cuda_graphs: bool = True,
        continuous: bool = True,
        exact_lora: bool = True,
        compile_kernels: bool | None = None,
        flex_attention: bool | None = None,
        fused_lora: bool | None = None,
    ):
        adapters = dict(adapters or {})
        reason = unsupported_reason(model, {})
        if reason is not None:
            raise UnsupportedModel(reason)
        config = model.config
        four_bit = bool(getattr(model, "is_loaded_in_4bit", False))
        if four_bit:
            from paraphrx.modeling import dequantize_frozen_base

            dequantize_frozen_base(model, dtype=model.get_input_embeddings().weight.dtype)
        self.model = model
        self.embed = model.get_input_embeddings()
        self.dtype = self.embed.weight.dtype
        self.device = self.embed.weight.device
        self.rotary = model.model.rotary_emb
        self.act = model.model.layers[0].mlp.act_fn
        self.lm_head = model.lm_head.weight
        self.final_norm = (1.0 + model.model.norm.weight.float()).detach()
        self.eps = config.rms_norm_eps
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.scaling = config.query_pre_attn_scalar**-0.5
        self.attn_cap, self.final_cap = config.attn_logit_softcapping, config.final_logit_softcapping
        self.sliding_window = config.sliding_window
        self.intermediate = config.intermediate_size
        self.vocab = self.lm_head.shape[0]
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = config.eos_token_id if eos is None else eos
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else 0

        try:
            loaded = [read_lora_adapter(name, path, projection_modules(model)) for name, path in adapters.items()]
        except UnsupportedAdapter as err:
            raise UnsupportedModel(str(err)) from None
        self.models = [BASE] + [a.name for a in loaded]
        lora_dtype = torch.float32 if exact_lora else self.dtype
        # the float32 shrink on the tensor cores, A in three bf16 parts (lora_batch): for a bf16 model's inputs
        self.split_lora = (
            exact_lora
            and self.dtype == torch.bfloat16
            and (self.device.type != "cuda" or cuda_float32_output_available(self.device))
        )
        self.model_index = {name: i for i, name in enumerate(self.models)}
        self.compile_kernels = self.device.type == "cuda" if compile_kernels is None else compile_kernels
        self.kernels = decoder_kernels(
            self.eps, self.scaling, self.attn_cap, self.final_cap, self.act, compiled=self.compile_kernels
        )
        self.fused_lora = lora_fused.available(self.device) if fused_lora is None else fused_lora
        self.flex = self.device.type == "cuda" if flex_attention is None else flex_attention
        self.flex_attention = (
            decode_attention.flex_decode_attention(self.scaling, self.attn_cap, self.device) if self.flex else None
        )
        self.layers = [
            self._build_layer(i, layer, config, loaded, lora_dtype, four_bit)
            for i, layer in enumerate(model.model.layers)
        ]

        self.max_slots = max_slots
        self.chunk_steps = chunk_steps
        self.kv_bucket = kv_bucket
        self.prefill_tokens = prefill_tokens
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.continuous = continuous
        self._state: dict | None = None
        self.stats = {
            "graphs_captured": 0,
            "decode_steps": 0,
            "prefill_batches": 0,
            "compactions": 0,
            "capture_s": 0.0,
            "lora_rows": 0,
            "adapter_rows": 0,
        }
        logger.info(
            "decode engine: {} models ({}), {} decoder layers in {}, {}, {} kernels, {} decode attention, LoRA {}",
            len(self.models),
            ", ".join(self.models),
            len(self.layers),
            self.dtype,
            "CUDA graphs" if self.cuda_graphs else "eager",
            "compiled" if self.compile_kernels else "eager",
            "flex" if self.flex else "padded",
            "fused (Triton)" if self.fused_lora else "in three steps",
        )

    def _build_layer(self, i: int, layer, config, adapters: list[LoraAdapter], lora_dtype, four_bit) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        prefix = f"model.layers.{i}"

        def projection(modules: list[str], linears: list[torch.nn.Linear]) -> _Projection:
            weight = _fuse(linears) if len(linears) > 1 else linears[0].weight.data
            outs = [m.out_features for m in linears]
            lora = stack_lora(adapters, modules, linears[0].in_features, outs, lora_dtype, self.device, self.split_lora)
            return _Projection(weight, lora, four_bit, self.kernels, lora_fused.expand_add if self.fused_lora else None)

        def names(group: str, projs: tuple[str, ...]) -> list[str]:
            return [f"{prefix}.{group}.{p}" for p in projs]

        norms = tuple(
            (1.0 + n.weight.float()).detach()
            for n in (
                layer.input_layernorm,
                layer.post_attention_layernorm,
                layer.pre_feedforward_layernorm,
                layer.post_feedforward_layernorm,
            )
        )
        return _Layer(
            qkv=projection(names("self_attn", ATTENTION[:3]), [attn.q_proj, attn.k_proj, attn.v_proj]),
            o=projection(names("self_attn", ("o_proj",)), [attn.o_proj]),
            gate_up=projection(names("mlp", MLP[:2]), [mlp.gate_proj, mlp.up_proj]),
            down=projection(names("mlp", ("down_proj",)), [mlp.down_proj]),
            norms=norms,
            sliding=config.layer_types[i] == "sliding_attention" and self.sliding_window is not None,
        )

    # --- the model --------------------------------------------------------------------------------------------------
    def _decoder(self, h: torch.Tensor, groups: LoraGroups | None, cos, sin, attend: Callable) -> torch.Tensor:
        """Every decoder layer on tokens h [N, hidden] (grouped by adapter: `groups`, None without adapters), then
        the final norm; `attend(index, layer, q, k, v)` is layer `index`'s attention, which also writes its keys and
        values."""
        ops = self.kernels
        n = h.shape[0]
        x = ops.norm(h, self.layers[0].norms[0])
        # Each residual add is fused with the norm that reads its sum: the layer's next one, or the final norm.
        next_norms = [layer.norms[0] for layer in self.layers[1:]] + [self.final_norm]
        for index, (layer, next_norm) in enumerate(zip(self.layers, next_norms)):
            qkv = layer.qkv(x, groups).view(n, self.heads + 2 * self.kv_heads, self.head_dim)
            qk = ops.rotate(qkv[:, : self.heads + self.kv_heads], cos, sin)
            q, key, value = qk[:, : self.heads], qk[:, self.heads :], qkv[:, self.heads + self.kv_heads :]
            attention = attend(index, layer, q, key, value).reshape(n, self.heads * self.head_dim)
            h, x = ops.residual_norm(h, layer.o(attention, groups), layer.norms[1], layer.norms[2])
            gate, up = layer.gate_up(x, groups).split(self.intermediate, dim=-1)
            h, x = ops.residual_norm(h, layer.down(ops.glu(gate, up), groups), layer.norms[3], next_norm)
        return x

    def _attention(self, q, keys, values, mask) -> torch.Tensor:
        """Eager Gemma-2 attention, GQA without copies: q [B, kv, g*T, d] against keys/values [B, kv, S, d]."""
        return torch.matmul(self.kernels.probs(torch.matmul(q, keys.transpose(-1, -2)), mask), values)

    def _greedy(self, x: torch.Tensor) -> torch.Tensor:
        """Argmax of the soft-capped logits of final-normed states x: computed in the model dtype as HF's forward
        does (generate then casts them to fp32, which changes no comparison)."""
        return self.kernels.greedy(F.linear(x, self.lm_head))

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        """HF's eager mask: 0 where a key is visible, the dtype's minimum where not."""
        return torch.zeros(allowed.shape, dtype=self.dtype, device=self.device).masked_fill_(
            ~allowed, torch.finfo(self.dtype).min
        )

    def _rope(self, h: torch.Tensor, positions: torch.Tensor):
        cos, sin = self.rotary(h, positions.view(1, -1))
        return cos.view(-1, 1, self.head_dim), sin.view(-1, 1, self.head_dim)

    # --- prefill ----------------------------------------------------------------------------------------------------
    def _run_prompts(self, prompts: list[list[int]], models: list[str], slots: list[int] | None = None):
        """The decoder on prompts right-padded to one length p: final-normed hidden states [m * p, hidden], and the
        prompts' model indices, lengths and slots on the device. With `slots`, each prompt's keys/values are
        written into that slot of the cache."""
        st = self._state
        m, p = len(prompts), _round_up(max(len(ids) for ids in prompts), 8)
        # One host-to-device copy from pinned memory: a copy of a plain list waits for the GPU's queue to drain.
        rows = [
            [*ids] + [self.pad_id] * (p - len(ids)) + [self.models.index(name), len(ids), -1 if slot is None else slot]
            for ids, name, slot in zip(prompts, models, slots or [None] * m)
        ]
        batch = torch.tensor(rows, dtype=torch.long, pin_memory=self.device.type == "cuda")
        batch = batch.to(self.device, non_blocking=True)
        ids, model_index, lengths, slot_idx = batch[:, :p], batch[:, p], batch[:, p + 1], batch[:, p + 2]
        h = self.embed(ids).view(m * p, -1)
        cos, sin = self._rope(h, torch.arange(p, device=self.device).repeat(m))
        # Right padding: a real token never sees a pad (causal), so one [p, p] mask serves every row.
        at = torch.arange(p, device=self.device)
        causal = at[None, :] <= at[:, None]
        window = causal & (at[None, :] > at[:, None] - (self.sliding_window or p))
        additive = {False: self._additive(causal), True: self._additive(window)}
        g = self.heads // self.kv_heads

        def attend(index, layer, q, k, v):
            k = k.reshape(m, p, self.kv_heads, self.head_dim).transpose(1, 2)
            v = v.reshape(m, p, self.kv_heads, self.head_dim).transpose(1, 2)
            if slots is not None:
                st["k"][index, slot_idx, :, :p] = k
                st["v"][index, slot_idx, :, :p] = v
            q = q.reshape(m, p, self.kv_heads, g, self.head_dim).permute(0, 2, 3, 1, 4)  # [m, kv, g, p, d]
            out = self._attention(q, k.unsqueeze(2), v.unsqueeze(2), additive[layer.sliding])
            return out.permute(0, 3, 1, 2, 4)  # [m, p, kv, g, d]

        groups = None
        if len(self.models) > 1:
            indices = [self.model_index[name] for name in models]
            groups = lora_groups(indices, len(self.models) - 1, repeat=p, present_only=True).to(self.device)
        x = self._decoder(h, groups, cos, sin, attend)
        return x, model_index, lengths, slot_idx

    def prompt_logits(self, prompts: list[list[int]], models: list[str]) -> torch.Tensor:
        """Soft-capped logits [m, p, vocab] of each prompt under its model (rows right-padded to p; a check of the
        engine's arithmetic against HF's forward)."""
        with torch.inference_mode():
            x = self._run_prompts(prompts, models)[0]
            return soft_cap(F.linear(x, self.lm_head), self.final_cap).view(len(prompts), -1, self.vocab)

    def _prefill(self, slots: list[int], rows: list[_Row]) -> None:
        """Prefill `rows` into `slots`: cache, first generated token, position and adapter mask of each slot."""
        st = self._state
        x, model_index, lengths, slot_idx = self._run_prompts(
            [r.request.prompt_ids for r in rows], [r.request.model for r in rows], slots
        )
        p = x.shape[0] // len(rows)
        first = self._greedy(x[lengths - 1 + torch.arange(len(rows), device=self.device) * p])
        st["tokens"][slot_idx] = first
        st["first"][slot_idx] = first
        st["pos"][slot_idx] = lengths
        self.stats["prefill_batches"] += 1

    # --- decode -----------------------------------------------------------------------------------------------------
    def _decode_step(self, width: int, kv_len: int, capacity: int) -> None:
        """One greedy step of slots [0, width): reads tokens/pos (and the adapter groups of that `capacity`), writes
        the next token to tokens and advances pos. Shapes depend only on (width, kv_len, capacity), and nothing here
        reads a value back to the host."""
        st = self._state
        tokens, pos = st["tokens"][:width], st["pos"][:width]
        h = self.embed(tokens)
        cos, sin = self._rope(h, pos)
        at = pos.view(width, 1, 1, 1).expand(width, self.kv_heads, 1, self.head_dim)  # each slot's cache column
        g = self.heads // self.kv_heads
        if self.flex:
            # keys lo < j <= pos: all of them on global layers, the window on sliding ones
            lo = {False: torch.full_like(pos, -1)}
            if self.sliding_window is not None:
                lo[True] = pos - self.sliding_window
        else:
            keys_at = torch.arange(kv_len, device=self.device)
            valid = keys_at[None, :] <= pos[:, None]
            allowed = {False: valid}
            if self.sliding_window is not None:
                allowed[True] = valid & (keys_at[None, :] > (pos - self.sliding_window)[:, None])
            additive = {s: self._additive(a).view(width, 1, 1, kv_len) for s, a in allowed.items()}

        def attend(index, layer, q, k, v):
            k_cache, v_cache = st["k"][index, :width], st["v"][index, :width]
            k_cache.scatter_(2, at, k.unsqueeze(2))
            v_cache.scatter_(2, at, v.unsqueeze(2))
            if self.flex:
                q = q.view(width, self.heads, 1, self.head_dim)
                return self.flex_attention(q, k_cache[:, :, :kv_len], v_cache[:, :, :kv_len], pos, lo[layer.sliding])
            q = q.reshape(width, self.kv_heads, g, self.head_dim)
            return self._attention(q, k_cache[:, :, :kv_len], v_cache[:, :, :kv_len], additive[layer.sliding])

        groups = st["groups"].get(capacity)
        if groups is not None:
            groups = LoraGroups(groups.pick, groups.back[:width])
        x = self._decoder(h, groups, cos, sin, attend)
        tokens.copy_(self._greedy(x))
        pos.add_(1).clamp_(max=st["max_len"] - 1)

    def _traced_step(self, width: int, kv_len: int, capacity: int) -> None:
        """A decode step that may compile: flex attention compiles one graph per (width, cache length, dtype), and
        an evaluation or benchmark process holds several engines, so dynamo's default limit of 8 would send the rest
        to eager flex (the whole score matrix, slow)."""
        if not self.flex:
            self._decode_step(width, kv_len, capacity)
            return
        with internals.recompile_limit_at_least(64):
            self._decode_step(width, kv_len, capacity)

    def _run_step(self, width: int, kv_len: int, capacity: int) -> None:
        if not self.cuda_graphs:
            self._traced_step(width, kv_len, capacity)
            return
        graph = self._state["graphs"].get((width, kv_len, capacity))
        if graph is None:
            graph = self._capture(width, kv_len, capacity)
        graph.replay()

    def _capture(self, width: int, kv_len: int, capacity: int):
        """Capture one decode step of this shape. The warm-up run compiles the fused kernels for the shape if they
        need it (compiling, or autotuning, inside a capture would fail) and writes keys/values only at the slots'
        current positions (rewritten by the real step before anything reads them); tokens and positions are
        restored."""
        st = self._state
        start = time.perf_counter()
        saved = st["tokens"].clone(), st["pos"].clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        self._groups_buffer(capacity)
        with torch.cuda.stream(stream):
            self._traced_step(width, kv_len, capacity)
        torch.cuda.current_stream().wait_stream(stream)
        st["tokens"].copy_(saved[0])
        st["pos"].copy_(saved[1])
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=st["pool"]):
            self._decode_step(width, kv_len, capacity)
        st["tokens"].copy_(saved[0])
        st["pos"].copy_(saved[1])
        st["graphs"][(width, kv_len, capacity)] = graph
        self.stats["graphs_captured"] += 1
        self.stats["capture_s"] += time.perf_counter() - start
        return graph

    # --- memory -----------------------------------------------------------------------------------------------------
    def _plan(self, requests: list[Request]) -> tuple[int, int]:
        """(slots, max_len) for these requests: every prompt plus its answer plus one chunk of overrun fits, and the
        cache with its per-row working set fits in free GPU memory."""
        longest = max(len(r.prompt_ids) + r.max_new_tokens for r in requests)
        step = math.lcm(self.kv_bucket, decode_attention.BLOCK) if self.flex else self.kv_bucket
        max_len = _round_up(longest + self.chunk_steps + 1, step)
        limit = self.max_slots or (512 if self.device.type == "cuda" else 64)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            item = torch.finfo(self.dtype).bits // 8
            kv = 2 * len(self.layers) * self.kv_heads * max_len * self.head_dim * item
            logits = self.vocab * (3 * item + 4)  # logits, their soft-capped copies, argmax workspace
            prefill = self.prefill_tokens * (6 * self.intermediate + 8 * self.heads * self.head_dim) * item * 2
            fit = int((free * 0.85 - prefill) // (kv + logits))
            if fit < limit:
                logger.info("decode engine: {} slots fit in {:.1f} GiB free", fit, free / 2**30)
            limit = min(limit, max(fit, 1))
        return min(limit, len(requests)), max_len

    def _allocate(self, slots: int, max_len: int) -> None:
        st = self._state
        if st is not None and st["slots"] >= slots and st["max_len"] >= max_len:
            return
        self._state = None  # free the old cache and its graphs first
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        shape = (len(self.layers), slots, self.kv_heads, max_len, self.head_dim)
        zeros = dict(device=self.device, dtype=self.dtype)
        self._state = {
            "slots": slots,
            "max_len": max_len,
            "k": torch.zeros(shape, **zeros),
            "v": torch.zeros(shape, **zeros),
            "tokens": torch.full((slots,), self.pad_id, dtype=torch.long, device=self.device),
            "first": torch.zeros(slots, dtype=torch.long, device=self.device),
            "pos": torch.zeros(slots, dtype=torch.long, device=self.device),
            "groups": {},  # capacity -> LoraGroups buffers that the decode steps of that capacity read
            "out": torch.zeros(slots, self.chunk_steps, dtype=torch.long, device=self.device),
            "graphs": {},
            "pool": torch.cuda.graph_pool_handle() if self.cuda_graphs else None,
        }
        logger.info(
            "decode engine: {} slots x {} positions, KV cache {:.2f} GiB",
            slots,
            max_len,
            2 * self._state["k"].numel() * self._state["k"].element_size() / 2**30,
        )

    def _groups_buffer(self, capacity: int) -> LoraGroups | None:
        """The device buffers of the adapter groups at this capacity (made on first use; None without adapters)."""
        st, n = self._state, len(self.models) - 1
        if n == 0:
            return None
        if capacity not in st["groups"]:
            zeros = dict(dtype=torch.long, device=self.device)
            st["groups"][capacity] = LoraGroups(torch.zeros(n, capacity, **zeros), torch.zeros(st["slots"], **zeros))
        return st["groups"][capacity]

    def _set_groups(self, live: dict[int, _Row], width: int) -> int:
        """Group slots [0, width) by adapter for the next decode steps (rows not live count as the base's); returns
        the capacity, whose buffers now hold the groups (0 without adapters)."""
        n = len(self.models) - 1
        if n == 0:
            return 0
        models = [0] * width
        for slot, row in live.items():
            models[slot] = self.model_index[row.request.model]
        counts = [0] * (n + 1)
        for index in models:
            counts[index] += 1
        capacity = capacity_for(max(counts[1:]), width)
        # rows the LoRA matmuls compute against rows that need them, over the next chunk of steps
        self.stats["lora_rows"] += n * capacity * self.chunk_steps
        self.stats["adapter_rows"] += sum(counts[1:]) * self.chunk_steps
        host, buffer = lora_groups(models, n, capacity), self._groups_buffer(capacity)
        buffer.pick.copy_(host_copy_source(host.pick, self.device), non_blocking=True)
        buffer.back[:width].copy_(host_copy_source(host.back, self.device), non_blocking=True)
        return capacity

    def _compact(self, live: dict[int, _Row], width: int) -> dict[int, int]:
        """Move the live rows into slots [0, width) (cache rows, tokens, positions); {old: new slot}."""
        st = self._state
        movers = sorted(s for s in live if s >= width)
        free = sorted(set(range(width)) - set(live))[: len(movers)]
        if movers:
            src, dst = (torch.tensor(x, device=self.device) for x in (movers, free))
            for name in ("k", "v"):
                st[name][:, dst] = st[name][:, src]
            for buffer in (st["tokens"], st["first"], st["pos"]):
                buffer[dst] = buffer[src]
        self.stats["compactions"] += 1
        return dict(zip(movers, free))

    # --- the loop ---------------------------------------------------------------------------------------------------
    def prepare(self, requests: list[Request]) -> int:
        """Allocate the cache for `requests` and, with flex attention on CUDA, compile and capture the decode step
        at every width the run can use (the slots, then each power of two from 8 below it: the tail's compactions),
        so no compilation stalls the run halfway (each at the adapter group width the requests' mix of models needs;
        another width is only captured, ~0.1 s, when met); `generate` calls it. Returns the slots the run decodes
        in."""
        slots, max_len = self._plan(requests)
        self._allocate(slots, max_len)
        if self.flex and self.cuda_graphs:  # padded attention's KV length follows the live rows: captured when met
            counts = Counter(r.model for r in requests)
            share = max((counts[name] for name in self.models[1:]), default=0) / len(requests)
            widths = [slots] + [w for w in (8 << i for i in range(slots.bit_length())) if w < slots]
            with torch.inference_mode():
                for width in widths:
                    capacity = capacity_for(math.ceil(width * share * 1.1), width) if len(self.models) > 1 else 0
                    if (width, self._state["max_len"], capacity) not in self._state["graphs"]:
                        self._capture(width, self._state["max_len"], capacity)
        return slots

    def generate(self, requests: list[Request]) -> Iterator[list[tuple[Request, list[int]]]]:
        """Greedy answers of `requests` (token ids, ending with the stop token when one was generated), yielded in
        groups as rows finish."""
        unknown = {r.model for r in requests} - set(self.models)
        if unknown:
            raise ValueError(f"no such model(s) in the engine: {sorted(unknown)}; have {self.models}")
        if not requests:
            return
        slots = self.prepare(requests)
        # Longest prompts first: prefill batches of similar length, and an out-of-memory shape fails at once; a prompt's
        # requests for the different models side by side, so each refill takes the models in turn (even groups).
        queue = sorted(requests, key=lambda r: (-len(r.prompt_ids), r.prompt_ids))
        queue.reverse()  # pop() from the end
        live: dict[int, _Row] = {}
        width = slots
        host_pos = [0] * slots
        with torch.inference_mode():
            while queue or live:
                if queue and (self.continuous or not live):
                    width = width if live else slots
                    free = [s for s in range(width) if s not in live][: len(queue)]
                    self._refill(free, queue, live, host_pos)
                if not live:
                    continue
                # flex reads each row's own length from the whole cache: one shape (graph, compile) per width
                kv_len = self._state["max_len"]
                if not self.flex:
                    kv_len = min(
                        _round_up(max(host_pos[s] for s in live) + self.chunk_steps + 1, self.kv_bucket), kv_len
                    )
                capacity = self._set_groups(live, width)
                out = self._state["out"]
                for step in range(self.chunk_steps):
                    self._run_step(width, kv_len, capacity)
                    out[:width, step].copy_(self._state["tokens"][:width])
                self.stats["decode_steps"] += self.chunk_steps
                first_and_out = torch.cat([self._state["first"][:width, None], out[:width]], dim=1).tolist()
                finished = []
                for slot in list(live):
                    row = live[slot]
                    new = first_and_out[slot] if row.fresh else first_and_out[slot][1:]
                    row.fresh = False
                    host_pos[slot] += self.chunk_steps
                    if _extend(row, new, self.eos_ids):
                        finished.append((row.request, row.tokens))
                        del live[slot]
                if finished:
                    yield finished
                # Tail (nothing left to refill): fewer slots decode faster; move the live rows down.
                if live and (not queue or not self.continuous) and _next_width(len(live), width) < width:
                    width = _next_width(len(live), width)
                    for old, new in self._compact(live, width).items():
                        live[new], host_pos[new] = live.pop(old), host_pos[old]

    def _refill(self, free: list[int], queue: list[Request], live: dict[int, _Row], host_pos: list[int]) -> None:
        """Prefill the next queued requests into the free slots, in batches of at most `prefill_tokens` tokens."""
        rows = [_Row(queue.pop()) for _ in free]
        batch: list[tuple[int, _Row]] = []
        for slot, row in zip(free, rows):
            longest = max([len(row.request.prompt_ids)] + [len(r.request.prompt_ids) for _, r in batch])
            if batch and _round_up(longest, 8) * (len(batch) + 1) > self.prefill_tokens:
                self._prefill([s for s, _ in batch], [r for _, r in batch])
                batch = []
            batch.append((slot, row))
        if batch:
            self._prefill([s for s, _ in batch], [r for _, r in batch])
        for slot, row in zip(free, rows):
            live[slot] = row
            host_pos[slot] = len(row.request.prompt_ids)


def _extend(row: _Row, new: list[int], eos_ids: set[int]) -> bool:
    """Append new tokens to a row up to and including its stop token (as `generate` returns it; decoding with
    `skip_special_tokens` drops it); True when the row is finished."""
    for token in new:
        row.tokens.append(token)
        if token in eos_ids or len(row.tokens) >= row.request.max_new_tokens:
            return True
    return False


def _round_up(x: int, step: int) -> int:
    return int(math.ceil(x / step) * step)


def _next_width(live: int, width: int) -> int:
    """The smallest power of two >= live (at least 8), or the current width when that is not smaller."""
    new = 8
    while new < live:
        new *= 2
    return min(new, width)


def text_requests(
    tokenizer, jobs: dict[str, list[str]], max_new_tokens: int, limits: dict[tuple[str, str], int] | None = None
) -> list[Request]:
    """One request per (model, prompt) of `jobs`, keyed by the prompt text (see `generate_texts`)."""
    limits = limits or {}
    prompts = list(dict.fromkeys(p for texts in jobs.values() for p in texts))
    ids = dict(zip(prompts, tokenizer(prompts)["input_ids"])) if prompts else {}
    return [
        Request(model, ids[p], min(max_new_tokens, limits.get((model, p), max_new_tokens)), key=p)
        for model, texts in jobs.items()
        for p in texts
    ]


def generate_texts(
    engine: GemmaDecodeEngine,
    tokenizer,
    jobs: dict[str, list[str]],
    max_new_tokens: int,
    on_answers: Callable[[str, list[str], list[str]], None] | None = None,
    limits: dict[tuple[str, str], int] | None = None,
) -> dict[str, dict[str, str]]:
    """{model: {prompt: answer}} for every (model, prompt) of `jobs`, decoded like `generate_batched`
    (`skip_special_tokens=True`). `on_answers(model, prompts, answers)` sees each group as it finishes (the cache
    appends there); `limits` caps single answers below `max_new_tokens` (the benchmark's forced lengths)."""
    requests = text_requests(tokenizer, jobs, max_new_tokens, limits)
    answers: dict[str, dict[str, str]] = {model: {} for model in jobs}
    for group in engine.generate(requests):
        by_model: dict[str, tuple[list[str], list[str]]] = {}
        for request, tokens in group:
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            answers[request.model][request.key] = text
            done = by_model.setdefault(request.model, ([], []))
            done[0].append(request.key)
            done[1].append(text)
        if on_answers is not None:
            for model, (keys, texts) in by_model.items():
                on_answers(model, keys, texts)
    return answers
