"""params.yaml is the single source of truth: every default the schema has equals it."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from icon2.core.params import Params
from tests.conftest import REPO


def _json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return value


def _mismatches(model: type[BaseModel], data: dict[str, Any], where: str) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        key = f"{where}.{name}" if where else name
        if name not in data:
            if not field.is_required():
                out.append(f"{key}: has a schema default but params.yaml does not set it")
            continue
        value = data[name]
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(value, dict):
            out += _mismatches(ann, value, key)
            continue
        if field.is_required():
            continue
        default = field.get_default(call_default_factory=True)
        default = _json(default)
        if default != value and not (isinstance(default, float) and default == float(value)):
            out.append(f"{key}: schema default {default!r} != params.yaml {value!r}")
    return out


def test_schema_defaults_equal_params_yaml() -> None:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    assert _mismatches(Params, data, "") == []


def test_the_baselines_score_at_icon2s_batch_in_every_shipped_params_file() -> None:
    # The cost ratio times ICON²'s consistency scoring and the baselines' judge: at
    # different batch sizes the seconds would measure the batch, not the method.
    for name in ("params.yaml", "params.gpu.yaml"):
        p = Params.model_validate(yaml.safe_load((REPO / name).read_text()))
        assert p.baselines.batch_size == p.score.batch_size, name
