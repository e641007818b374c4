"""The typed schema of ``params.yaml``: loaded and validated once, errors name the key.

Every stage reads its own section plus ``base``. Unknown keys, wrong types and values out
of range are rejected with a message such as
``params.yaml: pairs.gamma_pos: must be > 0 (got -0.1)``.

What lives where: ``sections`` holds the strict ``_Section`` base every section derives
from, with ``KNOWN_CRITERIA``, ``MAX_SEED`` and shared ``Literal`` types; ``pipeline`` the
main pipeline's sections (``base``, ``vllm``, directions, synthesize, score, filter, pairs,
evaluate, benchmark); ``training`` the ``train`` section (DPO / SPA / DRO) and the SPA loop
(``spa``); ``comparison`` the comparison pipeline's sections (baselines, select, cost,
leakage, sensitivity, compare); ``root`` the ``Params`` model of the whole file and
``spa_train_params``; ``loading`` the strict YAML loader, ``load_raw`` and ``load_params``;
``stage_keys`` ``STAGE_PARAMS`` and ``stage_params``. Import from this package, not from
the modules: they are an implementation detail. Nothing here imports an ML library.
"""

from __future__ import annotations

from icon2.core.params.comparison import (
    BASELINE_NAMES,
    BaselineName,
    BaselinesParams,
    CompareParams,
    CostParams,
    FeatureSource,
    LeakageParams,
    MethodName,
    SelectCriterion,
    SelectParams,
    SensitivityParams,
)
from icon2.core.params.loading import load_params, load_raw
from icon2.core.params.pipeline import (
    BaseParams,
    BenchmarkParams,
    DirectionsParams,
    EvaluateParams,
    FilterParams,
    HFParams,
    PairsParams,
    PromptPair,
    ScoreParams,
    SynthesizeParams,
    VLLMParams,
)
from icon2.core.params.root import Params, spa_train_params
from icon2.core.params.sections import KNOWN_CRITERIA, MAX_SEED, ReadPosition
from icon2.core.params.stage_keys import STAGE_PARAMS, stage_params
from icon2.core.params.training import (
    SCHEDULERS,
    DROParams,
    SPAIteration,
    SPALoopParams,
    SPAParams,
    TrainParams,
    TrainSection,
)

__all__ = [
    "BASELINE_NAMES",
    "KNOWN_CRITERIA",
    "MAX_SEED",
    "SCHEDULERS",
    "STAGE_PARAMS",
    "BaseParams",
    "BaselineName",
    "BaselinesParams",
    "BenchmarkParams",
    "CompareParams",
    "CostParams",
    "DROParams",
    "DirectionsParams",
    "EvaluateParams",
    "FeatureSource",
    "FilterParams",
    "HFParams",
    "LeakageParams",
    "MethodName",
    "PairsParams",
    "Params",
    "PromptPair",
    "ReadPosition",
    "SPAIteration",
    "SPALoopParams",
    "SPAParams",
    "ScoreParams",
    "SelectCriterion",
    "SelectParams",
    "SensitivityParams",
    "SynthesizeParams",
    "TrainParams",
    "TrainSection",
    "VLLMParams",
    "load_params",
    "load_raw",
    "spa_train_params",
    "stage_params",
]
