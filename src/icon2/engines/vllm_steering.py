"""Steering inside vLLM without a fork: a per-layer vector buffer in the decoder layers.

vLLM compiles the model (torch.compile, CUDA graphs on GPUs), and forward hooks are not
part of the compiled graph: they are silently skipped. So the vector must be part of the
layer itself. ``register`` — run by vLLM in every one of its processes through the
``vllm.general_plugins`` entry point, and active only when ``ICON2_VLLM_STEERING=1`` —
patches the supported decoder-layer classes before any model is built: each instance gets
a non-persistent buffer ``icon2_steer`` [hidden] (zeros) that is added to the residual
stream the layer returns. vLLM's layers return ``(hidden_states, residual)`` and the HF
layer output is their sum, so adding the vector to ``residual`` is exactly HF's
"add γ·s·u to the layer output", at every position the layer computes (prompt included).

The buffer is a graph input, so ``SteeringWorker.icon2_set_steering`` (called through
``LLM.collective_rpc``) changes the vectors in place between ``generate`` calls with no
recompilation. This module imports only torch at import time: vLLM loads it in processes
that know nothing of icon2.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

ENV_FLAG = "ICON2_VLLM_STEERING"
BUFFER = "icon2_steer"
# architecture (config.json) -> (vLLM module, decoder-layer class whose forward is patched)
SUPPORTED = {
    "LlamaForCausalLM": ("vllm.model_executor.models.llama", "LlamaDecoderLayer"),
    "MistralForCausalLM": ("vllm.model_executor.models.mistral", "MistralDecoderLayer"),
    "Qwen2ForCausalLM": ("vllm.model_executor.models.qwen2", "Qwen2DecoderLayer"),
}
_LAYER_NAME = re.compile(r"layers\.(\d+)$")


def register() -> None:
    """vLLM general-plugin entry point: patch the supported layers (if steering is on)."""
    if os.environ.get(ENV_FLAG) != "1":
        return
    for module, name in SUPPORTED.values():
        _patch(getattr(importlib.import_module(module), name))


def _patch(cls: type[torch.nn.Module]) -> None:
    if cls.__dict__.get("_icon2_steering", False):
        return  # plugins may be loaded more than once per process
    init = cls.__init__
    forward = cls.__dict__["forward"]  # a subclass (Mistral) has its own forward

    @functools.wraps(init)
    def steered_init(self: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if BUFFER not in self._buffers:  # Mistral's __init__ runs Llama's (patched) one
            # Built under vLLM's default dtype and device, like the layer's weights;
            # non-persistent, so weight loading neither expects nor fills it.
            zeros = torch.zeros(int(self.hidden_size))  # type: ignore[arg-type]
            self.register_buffer(BUFFER, zeros, persistent=False)

    @functools.wraps(forward)
    def steered_forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        hidden_states, residual = forward(self, *args, **kwargs)
        # Out of place: `residual` may alias a tensor the caller still reads.
        return hidden_states, residual + self._buffers[BUFFER]

    setattr(cls, "__init__", steered_init)  # noqa: B010 - patched on the class, typed loosely
    setattr(cls, "forward", steered_forward)  # noqa: B010
    setattr(cls, "_icon2_steering", True)  # noqa: B010


def steering_buffers(model: torch.nn.Module) -> dict[int, torch.Tensor]:
    """1-based layer -> its buffer, for the layers this worker holds (all, unless PP)."""
    out = {}
    for name, module in model.named_modules():
        buf = module._buffers.get(BUFFER)
        match = _LAYER_NAME.search(name)
        if buf is not None and match:
            out[int(match.group(1)) + 1] = buf
    return out


class SteeringWorker:
    """Mixed into vLLM's worker (``worker_extension_cls``): methods for ``collective_rpc``."""

    def icon2_steering_layers(self) -> list[int]:
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        return sorted(steering_buffers(model))

    def icon2_steering_norms(self) -> dict[int, float]:
        """Each steerable layer's vector norm (all zeros between calls)."""
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        return {k: float(v.float().norm()) for k, v in steering_buffers(model).items()}

    def icon2_set_steering(self, vectors: Mapping[int, Sequence[float]]) -> None:
        """Set every steerable layer's vector in place; layers not given get zeros.

        Vectors travel as lists of floats (vLLM's RPC serialises tensors that way anyway).
        """
        wanted = {int(k): v for k, v in vectors.items()}
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        for layer, buf in steering_buffers(model).items():
            vec = wanted.get(layer)
            if vec is None:
                buf.zero_()
            else:
                buf.copy_(torch.tensor(vec, dtype=torch.float32))
