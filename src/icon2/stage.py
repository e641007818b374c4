"""What every stage entry point shares: one-line errors, determinism, params and model opening."""

from __future__ import annotations

import functools
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch

from icon2.core.errors import Icon2Error
from icon2.core.params import Params, load_params

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


def open_stage(params: Path, *, seed: int | None = None) -> Params:
    """Load and validate the params file, then seed every RNG (``base.seed`` by default)."""
    p = load_params(params)
    seed_everything(p.base.seed if seed is None else seed)
    return p


def load_model(model_dir: Path, p: Params) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, card) of a model directory, in ``base.dtype`` on ``base.device``."""
    from icon2.model.loading import load_local

    return load_local(model_dir, dtype=p.base.dtype, device=p.base.device)
