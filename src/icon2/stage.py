"""What every stage entry point shares: one-line errors, determinism, params and model opening."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

# user_errors lives in core so that stages/check.py runs without importing torch.
from icon2.core.errors import user_errors as user_errors
from icon2.core.params import Params, load_params


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


def load_model(
    model_dir: Path, p: Params, *, dtype: str | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, card) of a model directory, in ``base.dtype`` (or ``dtype``) on
    ``base.device``."""
    from icon2.model.loading import load_local

    return load_local(model_dir, dtype=dtype or p.base.dtype, device=p.base.device)
