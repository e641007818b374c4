"""What every stage entry point shares: error reporting, determinism, provenance."""

from __future__ import annotations

import functools
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch

import icon2
from icon2.errors import Icon2Error
from icon2.io import sha256_file
from icon2.params import Params, section_dict

P = ParamSpec("P")
R = TypeVar("R")


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn an Icon2Error into one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Icon2Error as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def provenance(
    stage: str,
    params: Params,
    sections: list[str],
    inputs: dict[str, Path],
    card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record of what produced an artifact: model, params sections, input hashes."""
    record: dict[str, Any] = {
        "stage": stage,
        "icon2_version": icon2.__version__,
        "params": {name: section_dict(params, name) for name in ["base", *sections]},
        "inputs": {name: _hash_input(path) for name, path in inputs.items()},
    }
    if card is not None:
        record["model"] = card["name"]
        record["revision"] = card.get("revision")
        record["weights_sha256"] = card["weights_sha256"]
    return record


def _hash_input(path: Path) -> str:
    if path.is_dir():
        from icon2.models import weights_hash

        return weights_hash(path)
    return sha256_file(path)
