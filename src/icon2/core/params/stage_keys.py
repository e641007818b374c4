"""Which params each stage reads (``STAGE_PARAMS``) and their values for provenance."""

from __future__ import annotations

from typing import Any

from icon2.core.params.root import Params

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
_ENGINE = ("base.engine", "hf.dtype", "vllm.dtype")
# Not a dependency of any stage: base.generation_accelerate_config decides how many
# processes generate, not what they write (the bytes are one process's).
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
    "evaluate": (*_RUNTIME, *_ENGINE, "base.system_prompt", "pairs.layers", "evaluate"),
    "benchmark": (*_RUNTIME, "base.system_prompt", "train.beta", "benchmark"),
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
    "cost": ("baselines.methods", "cost"),
    "leakage": ("leakage",),
    "sensitivity": (*_RUNTIME, "directions", "pairs.layers", "sensitivity"),
    "signals": (*_RUNTIME, "train.beta", "evaluate", "compare.methods"),
    "compare": ("directions.criteria", "compare", "cost"),
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
