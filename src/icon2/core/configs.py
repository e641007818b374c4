"""Reading the configuration files a run is given beside ``params.yaml``: a model's
``config.json`` and an ``accelerate`` config, each refused with one clear error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from icon2.core.errors import InputError


def read_config(path: Path) -> dict[str, Any]:
    """A model's ``config.json`` (``path`` is the file or the model directory).

    Raises:
        InputError: If the file is missing or not a JSON object.
    """
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"{file}: no such file (expected a model directory or its config.json)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{file}: expected a JSON object")
    return data


def read_accelerate_config(path: Path) -> dict[str, Any]:
    """An ``accelerate`` config file, parsed (``accelerate launch --config_file`` reads it).

    Raises:
        InputError: If the file is missing, is not YAML or is not a mapping.
    """
    if not path.is_file():
        raise InputError(f"{path}: accelerate config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a valid accelerate config (YAML: {first})") from None
    if not isinstance(data, dict) or "distributed_type" not in data:
        raise InputError(f"{path}: not an accelerate config (no distributed_type key)")
    return data
