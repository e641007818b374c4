"""What every section of ``params.yaml`` shares: the strict ``_Section`` base and shared bounds."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

KNOWN_CRITERIA = ("honesty", "harmlessness", "helpfulness", "general")
ReadPosition = Literal["generation_prompt", "end_of_user"]


# Seeds feed numpy (< 2**32) and torch; a larger one would pass one stage and overflow in
# another, so every seed is bounded here.
MAX_SEED = 2**32 - 1


class _Section(BaseModel):
    # strict: a YAML `true` is not an int, "3" is not a number; allow_inf_nan: γ = .nan is
    # rejected here instead of failing minutes later (NaN compares false with every bound).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
