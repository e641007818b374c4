"""The comparison's sections (comparison/dvc.yaml): baselines, selection, cost, analyses."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from icon2.core.params.sections import MAX_SEED, AnswerBudget, _Section

BaselineName = Literal["sampling_ranking", "self_rewarding", "self_refine", "direct_prompting"]
BASELINE_NAMES: tuple[BaselineName, ...] = (
    "sampling_ranking",
    "self_rewarding",
    "self_refine",
    "direct_prompting",
)
SelectCriterion = Literal["reward", "projection_gap"]
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
    # Scoring batch; the default equals score.batch_size, so the baselines' annotation is
    # timed at the batch ICON²'s consistency scoring uses (a like-for-like cost).
    batch_size: int = Field(32, ge=1)


class SelectParams(_Section):
    """A6 / appendix J: the γ⁺ × γ⁻ × layer-range grid, scored without training."""

    instructions: int = Field(16, ge=1)  # seeded subsample of the train split (paper: 100)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)  # null = base.seed
    # The paper: γ⁺ ∈ {0.01, 0.03, 0.05, 0.1, 0.3, 0.5}, γ⁻ the same negated (6 × 6 × 3).
    gamma_pos: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.3])
    gamma_neg: list[float] = Field(default_factory=lambda: [-0.05, -0.1, -0.3])
    layer_ranges: dict[str, list[int]] | None = None  # null = early / middle / late thirds
    # What ranks the settings (icon2.steps.selection): the judge's or reward model's scores
    # (the paper's rule) or the judge-free projection gap of chosen vs rejected answers.
    criterion: SelectCriterion = "projection_gap"
    min_share: float = Field(0.9, ge=0.0, lt=1.0)  # share of kept pairs that separate, to exceed
    min_kept_fraction: float = Field(0.5, ge=0.0, le=1.0)  # A4-kept share a setting needs
    projection_layers: list[int] | None = None  # where the gap is read; null = middle third
    max_new_tokens: AnswerBudget | None = None  # null = pairs.max_new_tokens

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
