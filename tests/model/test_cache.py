from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import torch

from icon2.model.cache import cache_keyword, returned_cache


def test_keyword_is_the_one_forward_takes(tiny_model: Any) -> None:
    model, _ = tiny_model
    parameters = inspect.signature(model.forward).parameters
    assert cache_keyword(model) in parameters

    class Old(torch.nn.Module):
        def forward(self, x: Any, past_key_values: Any = None) -> Any:
            return x

    class New(torch.nn.Module):
        def forward(self, x: Any, cache: Any = None) -> Any:
            return x

    assert cache_keyword(Old()) == "past_key_values" and cache_keyword(New()) == "cache"


def test_returned_cache_prefers_the_new_name() -> None:
    class Out(dict[str, Any]):
        past_key_values = "old"

    assert returned_cache(Out(cache="new")) == "new"
    assert returned_cache(Out()) == "old"
    assert returned_cache(SimpleNamespace(get=lambda k: None, past_key_values="old")) == "old"
