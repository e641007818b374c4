"""The record every artifact carries: which stage, params, model and inputs produced it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import icon2
from icon2.core.io import sha256_file, weights_hash
from icon2.core.params import STAGE_PARAMS, Params, stage_params
from icon2.core.precision import stage_precisions


def provenance(
    stage: str,
    params: Params,
    inputs: dict[str, Path],
    card: dict[str, Any] | None = None,
    *,
    iteration: str | None = None,
) -> dict[str, Any]:
    """Record of what produced an artifact: the stage, the values of exactly the params it
    depends on (``STAGE_PARAMS``), the precisions ``auto`` resolved to on this machine (and
    why), the SHA-256 of its inputs and the model's identity."""
    record: dict[str, Any] = {
        "stage": stage,
        "icon2_version": icon2.__version__,
        "params": stage_params(params, stage, iteration),
        "precision": {r.key: r.record() for r in stage_precisions(params, STAGE_PARAMS[stage])},
        "inputs": {name: _hash_input(path) for name, path in inputs.items()},
    }
    if card is not None:
        record["model"] = card["name"]
        record["revision"] = card.get("revision")
        record["weights_sha256"] = card["weights_sha256"]
    return record


def _hash_input(path: Path) -> str:
    if path.is_dir():
        return weights_hash(path)
    return sha256_file(path)
