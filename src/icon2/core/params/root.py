"""The root model: the whole ``params.yaml``, one field per section, and views derived from it."""

from __future__ import annotations

from icon2.core.params.comparison import (
    BaselinesParams,
    CompareParams,
    CostParams,
    LeakageParams,
    SelectParams,
    SensitivityParams,
)
from icon2.core.params.pipeline import (
    BaseParams,
    BenchmarkParams,
    DirectionsParams,
    EvaluateParams,
    FilterParams,
    HFParams,
    PairsParams,
    ScoreParams,
    SynthesizeParams,
    VLLMParams,
)
from icon2.core.params.sections import _Section
from icon2.core.params.training import SPALoopParams, TrainParams, TrainSection


class Params(_Section):
    base: BaseParams = BaseParams()
    hf: HFParams = HFParams()
    vllm: VLLMParams = VLLMParams()
    directions: DirectionsParams
    synthesize: SynthesizeParams = SynthesizeParams()
    score: ScoreParams = ScoreParams()
    filter: FilterParams = FilterParams()
    pairs: PairsParams = PairsParams()
    train: TrainSection = TrainSection()
    evaluate: EvaluateParams = EvaluateParams()
    benchmark: BenchmarkParams = BenchmarkParams()
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
