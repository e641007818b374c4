"""Reading ``params.yaml``: a strict YAML loader, validation, and errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from icon2.core.errors import ParamsError
from icon2.core.params.root import Params


def _format_error(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "value_error":
            # Section validators raise "field: message"; report it as section.field.
            msg = msg.removeprefix("Value error, ")
            field, sep, rest = msg.partition(": ")
            if sep and field.isidentifier():
                key, msg = f"{key}.{field}", rest
        elif "input" in e and e["type"] != "missing":
            msg = f"{msg} (got {e['input']!r})"
            if key.endswith("seed") and e["type"] == "less_than_equal":
                msg += "; seeds must fit in 32 bits (numpy's limit)"
        lines.append(f"{path}: {key}: {msg}")
    return "\n".join(lines)


class _DuplicateKey(yaml.YAMLError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last
    silently) and reads ``1e-5`` as a float, as YAML 1.2 does (1.1 wants ``1.0e-5``)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(
                    f"line {line}: key {key!r} is written twice (first on line {seen[key]}); "
                    f"keep one of them"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_raw(path: Path) -> dict[str, Any]:
    """Read params.yaml as a mapping, with a clear error when it is not one."""
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except _DuplicateKey as exc:
        raise ParamsError(f"{path}: {exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path}: not valid UTF-8 YAML: {' '.join(str(exc).split())}") from None
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
