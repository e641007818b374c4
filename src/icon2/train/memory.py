"""Per-GPU memory plan for preference training, from a model's ``config.json`` (no torch).

A back-of-the-envelope estimate, written so that each term can be checked by hand:

* **weights, gradients, optimizer** per parameter Ψ: weights and gradients in the training
  precision (4 bytes fp32, 2 bytes bf16/fp16); AdamW keeps two fp32 moments (8 bytes) plus,
  with 16-bit weights, an fp32 master copy (4 bytes) — the ZeRO paper's 2Ψ + 2Ψ + 12Ψ.
  ``adamw_16bit`` is plain ``torch.optim.AdamW`` on a model loaded in 16 bits (moments in the
  weights' dtype, no master copy: 2Ψ + 2Ψ + 4Ψ).
* **sharding** over G GPUs: ZeRO-1 splits optimizer states, ZeRO-2 also gradients, ZeRO-3
  and FSDP (``FULL_SHARD``) also weights; a sharded model gathers one unit at a time (the
  largest decoder layer or the embedding), counted twice for prefetching. Offloading moves
  the optimizer states (or the weights) to host memory.
* **reference model**: a frozen copy in 16 bits (sharded like the policy under ZeRO-3/FSDP,
  replicated otherwise, as TRL prepares it), or nothing with precomputed reference log-probs.
* **activations** for one micro-batch of ``per_device_batch`` pairs (2 × that many sequences
  of ``max_length`` tokens, the padding worst case), assuming memory-efficient attention (no
  T × T score matrix): per token and layer the saved tensors of a pre-norm block,
  ``7h + (heads + 2·kv_heads)·head_dim + 4·I`` values for a gated MLP. With gradient
  checkpointing only each layer's input is kept, plus one layer recomputed.
* **logits**: ``dpo``/``dro`` go through TRL's fused, tiled LM head (no ``[N, T, V]`` tensor);
  ``spa`` mixes full policy and reference logits (16-bit each) and upcasts to fp32 for the
  log-softmax.
* a fixed **overhead** for the CUDA context, kernels and allocator fragmentation.

Real runs differ by framework buffers (DeepSpeed's bucket sizes, NCCL), the actual padded
lengths and the attention kernel; treat "fits" within ~10 % as "try it".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from icon2.core.errors import InputError, ParamsError

Precision = Literal["fp32", "bf16", "fp16"]
Sharding = Literal["none", "zero1", "zero2", "zero3", "fsdp"]
Reference = Literal["model", "precomputed"]
Optimizer = Literal["adamw", "adamw_16bit"]
Loss = Literal["dpo", "spa", "dro"]

GIB = 1024**3
_NON_GATED = frozenset({"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "gpt_bigcode"})


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that the estimate needs."""

    vocab: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    gated: bool
    experts: int = 1
    active_experts: int = 1

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """Reads a Hugging Face ``config.json`` (Llama, Mistral, Qwen, Gemma, GPT-2 names).

        Raises:
            InputError: If a required size is missing.
        """
        cfg = dict(config.get("text_config") or config)  # multimodal configs nest the LM

        def size(*names: str, default: int | None = None) -> int:
            for name in names:
                if cfg.get(name) is not None:
                    return int(cfg[name])
            if default is None:
                raise InputError(f"config.json has none of {list(names)}")
            return default

        hidden = size("hidden_size", "n_embd", "d_model")
        heads = size("num_attention_heads", "n_head")
        experts = size("num_local_experts", "num_experts", default=1)
        return cls(
            vocab=size("vocab_size"),
            hidden=hidden,
            layers=size("num_hidden_layers", "n_layer"),
            intermediate=size(
                *(("moe_intermediate_size",) if experts > 1 else ()),
                "intermediate_size",
                "n_inner",
                default=4 * hidden,
            ),
            heads=heads,
            kv_heads=size("num_key_value_heads", default=heads),
            head_dim=size("head_dim", default=hidden // heads),
            tied=bool(cfg.get("tie_word_embeddings", False)),
            gated=str(cfg.get("model_type", "")) not in _NON_GATED,
            experts=experts,
            active_experts=size("num_experts_per_tok", default=1) if experts > 1 else 1,
        )

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder block (attention, MLP experts, two norms)."""
        attn = self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim
        attn += self.heads * self.head_dim * self.hidden
        mlp = (3 if self.gated else 2) * self.hidden * self.intermediate * self.experts
        router = self.hidden * self.experts if self.experts > 1 else 0
        return attn + mlp + router + 2 * self.hidden

    @property
    def params(self) -> int:
        head = 0 if self.tied else self.embedding_params
        return self.embedding_params + head + self.layers * self.layer_params + self.hidden

    def activation_values_per_token(self) -> int:
        """Saved activations of one block for one token (values, not bytes)."""
        qkv = (self.heads + 2 * self.kv_heads) * self.head_dim
        mlp = (4 if self.gated else 2) * self.intermediate * self.active_experts
        return 7 * self.hidden + qkv + mlp


@dataclass(frozen=True)
class Setup:
    """One training configuration to plan for (defaults: the papers' 8×H100 ZeRO-3 run)."""

    precision: Precision = "bf16"
    sharding: Sharding = "none"
    gpus: int = 1
    reference: Reference = "model"
    loss: Loss = "dpo"
    per_device_batch: int = 1
    max_length: int = 1024
    gradient_checkpointing: bool = True
    optimizer: Optimizer = "adamw"
    offload_optimizer: bool = False
    offload_params: bool = False
    gpu_gib: float = 80.0
    overhead_gib: float = 1.5

    def __post_init__(self) -> None:
        if self.gpus < 1 or self.per_device_batch < 1 or self.max_length < 1:
            raise ParamsError("gpus, per_device_batch and max_length must be >= 1")
        if self.gpu_gib <= 0:
            raise ParamsError(f"gpu_gib must be > 0, got {self.gpu_gib}")
        if self.loss == "spa" and self.reference == "precomputed":
            raise ParamsError("loss 'spa' needs the reference model's logits in every step")
        if self.offload_params and self.sharding not in ("zero3", "fsdp"):
            raise ParamsError("offloading parameters needs sharding zero3 or fsdp")


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated bytes per GPU, by term."""

    model_params: int
    setup: Setup
    terms: dict[str, float] = field(default_factory=dict)

    @property
    def total_gib(self) -> float:
        return sum(self.terms.values()) / GIB

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.setup.gpu_gib

    def format(self) -> str:
        """A table of the terms, the total and the verdict (one line each)."""
        s = self.setup
        lines = [
            f"model: {self.model_params / 1e9:.2f}B parameters; {s.precision}, {s.optimizer}, "
            f"sharding {s.sharding} over {s.gpus} GPU(s), reference {s.reference}, loss {s.loss}",
            f"micro-batch: {s.per_device_batch} pair(s) x 2 x {s.max_length} tokens, "
            f"gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}",
        ]
        lines += [f"  {name:<12} {b / GIB:8.2f} GiB" for name, b in self.terms.items()]
        verdict = "fits" if self.fits else "does NOT fit"
        lines.append(
            f"  {'total':<12} {self.total_gib:8.2f} GiB per GPU of {s.gpu_gib:g} GiB: {verdict}"
        )
        return "\n".join(lines)


def estimate(config: Mapping[str, Any], setup: Setup) -> MemoryPlan:
    """Per-GPU memory of training a model with ``config`` under ``setup``."""
    shape = ModelShape.from_config(config)
    n, g, s = shape.params, setup.gpus, setup
    w = 4 if s.precision == "fp32" else 2
    # adamw: two fp32 moments (+ an fp32 master copy of 16-bit weights); adamw_16bit: two
    # moments in the weights' own dtype.
    opt_per_param = (8 + (4 if w == 2 else 0)) if s.optimizer == "adamw" else 2 * w
    shard_opt = s.sharding != "none"
    shard_grad = s.sharding in ("zero2", "zero3", "fsdp")
    shard_weights = s.sharding in ("zero3", "fsdp") and g > 1
    unit = max(shape.layer_params, shape.embedding_params)
    terms: dict[str, float] = {}
    weights = 0.0 if s.offload_params else n * w / (g if shard_weights else 1)
    terms["weights"] = weights + (2 * unit * w if shard_weights else 0.0)
    terms["gradients"] = n * w / (g if shard_grad else 1)
    terms["optimizer"] = 0.0 if s.offload_optimizer else n * opt_per_param / (g if shard_opt else 1)
    if s.reference == "model" and not s.offload_params:
        terms["reference"] = n * w / (g if shard_weights else 1)
    else:
        terms["reference"] = 0.0
    tokens = 2 * s.per_device_batch * s.max_length
    per_layer = tokens * shape.activation_values_per_token() * w
    if s.gradient_checkpointing:
        terms["activations"] = shape.layers * tokens * shape.hidden * w + per_layer
    else:
        terms["activations"] = shape.layers * per_layer
    terms["logits"] = tokens * shape.vocab * (2 * w + 8) if s.loss == "spa" else 0.0
    terms["overhead"] = s.overhead_gib * GIB
    return MemoryPlan(model_params=n, setup=setup, terms=terms)
