"""What every section of ``params.yaml`` shares: the strict ``_Section`` base and shared bounds."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict

KNOWN_CRITERIA = ("honesty", "harmlessness", "helpfulness", "general")
ReadPosition = Literal["generation_prompt", "end_of_user"]


# Seeds feed numpy (< 2**32) and torch; a larger one would pass one stage and overflow in
# another, so every seed is bounded here.
MAX_SEED = 2**32 - 1


class _Section(BaseModel):
    # strict: a YAML `true` is not an int, "3" is not a number; allow_inf_nan: γ = .nan is
    # rejected here instead of failing minutes later (NaN compares false with every bound).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# An answer that ends needs one token of text and the end-of-turn token. With a budget of 1
# every answer is empty or cut, and the stages that drop such answers (synthesize's
# cleaning, pairs, the baselines and the grid) would generate everything to keep nothing.
MIN_ANSWER_TOKENS = 2


def _answer_budget(value: int) -> int:
    if value < MIN_ANSWER_TOKENS:
        raise ValueError(
            f"must be >= {MIN_ANSWER_TOKENS}: an answer that ends needs a token of text and "
            f"the end-of-turn token, so {value} can only give empty or cut answers, which "
            f"are dropped (got {value})"
        )
    return value


AnswerBudget = Annotated[int, AfterValidator(_answer_budget)]
