"""Steering inside vLLM without a fork: per-layer vector tables in the decoder layers.

vLLM compiles the model (torch.compile, CUDA graphs on GPUs), and forward hooks are not
part of the compiled graph: they are silently skipped. So the vectors must be part of the
layer itself. ``register`` — run by vLLM in every one of its processes through the
``vllm.general_plugins`` entry point, and active only when ``ICON2_VLLM_STEERING=1`` —
patches the supported decoder-layer classes before any model is built. Each instance gets
two non-persistent buffers:

* ``icon2_steer`` [GROUPS, hidden]: row g is steering group g's vector at this layer (row
  0, the unsteered group, stays zero);
* ``icon2_rows`` [max tokens per step]: the group of every token the step computes.

The layer adds ``icon2_steer[icon2_rows]`` to the residual stream it returns. vLLM's layers
return ``(hidden_states, residual)`` and the HF layer output is their sum, so this is
exactly HF's "add γ·s·u to the layer output", at every position the layer computes (prompt
included), with a different vector per request: rows with different vectors share one
continuous batch.

A request names its group in ``SamplingParams.extra_args["icon2_group"]``. Before every
forward, the worker (``SteeringWorker``, through a wrapper around the model runner's input
preparation) writes each scheduled token's group into ``icon2_rows``, in the order the
runner lays the tokens out. The buffers are graph inputs, so ``icon2_set_steering`` (called
through ``LLM.collective_rpc``) and the per-step rows change them in place with no
recompilation. This module imports only torch and numpy at import time: vLLM loads it in
processes that know nothing of icon2.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch

ENV_FLAG = "ICON2_VLLM_STEERING"
BUFFER = "icon2_steer"
ROWS = "icon2_rows"
EXTRA_KEY = "icon2_group"  # SamplingParams.extra_args key: the request's steering group
GROUPS = 64  # rows of each layer's table; group 0 is the unsteered one
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
            # non-persistent, so weight loading neither expects nor fills them.
            table = torch.zeros(GROUPS, int(self.hidden_size))  # type: ignore[arg-type]
            self.register_buffer(BUFFER, table, persistent=False)
            rows = torch.zeros(_max_tokens(), dtype=torch.long)
            self.register_buffer(ROWS, rows, persistent=False)

    @functools.wraps(forward)
    def steered_forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        hidden_states, residual = forward(self, *args, **kwargs)
        table, rows = (
            cast(torch.Tensor, self._buffers[BUFFER]),
            cast(torch.Tensor, self._buffers[ROWS]),
        )
        # Out of place: `residual` may alias a tensor the caller still reads.
        return hidden_states, residual + table[rows[: residual.shape[0]]]

    setattr(cls, "__init__", steered_init)  # noqa: B010 - patched on the class, typed loosely
    setattr(cls, "forward", steered_forward)  # noqa: B010
    setattr(cls, "_icon2_steering", True)  # noqa: B010


def _max_tokens() -> int:
    """The most tokens one forward computes: the scheduler's per-step token budget."""
    from vllm.config import get_current_vllm_config

    return int(get_current_vllm_config().scheduler_config.max_num_batched_tokens)


def steering_buffers(model: torch.nn.Module, name: str = BUFFER) -> dict[int, torch.Tensor]:
    """1-based layer -> its ``name`` buffer, for the layers this worker holds (all, unless
    pipeline-parallel)."""
    out = {}
    for path, module in model.named_modules():
        buf = module._buffers.get(name)
        match = _LAYER_NAME.search(path)
        if buf is not None and match:
            out[int(match.group(1)) + 1] = buf
    return out


def request_group(state: Any) -> int:
    """The steering group a runner's request state carries (0: none)."""
    extra = getattr(getattr(state, "sampling_params", None), "extra_args", None) or {}
    return int(extra.get(EXTRA_KEY, 0))


def track_groups(runner: Any, model: torch.nn.Module) -> None:
    """Wrap ``runner._prepare_inputs`` so that every step writes its tokens' groups into the
    layers' ``icon2_rows`` before the forward (once per runner)."""
    if getattr(runner, "_icon2_tracking", False):
        return
    buffers = list(steering_buffers(model, ROWS).values())
    prepare = getattr(runner, "_prepare_inputs", None)
    if prepare is None:
        raise RuntimeError(
            f"icon2 steering needs vLLM's V1 model runner, got {type(runner).__name__} "
            "(set VLLM_USE_V2_MODEL_RUNNER=0)"
        )
    if getattr(getattr(runner, "parallel_config", None), "use_ubatching", False):
        # Micro-batching runs the model once per slice of the tokens: each slice would read
        # the rows from the start of the buffer and get other requests' groups.
        raise RuntimeError("icon2 steering does not support vLLM micro-batching (enable_dbo)")
    state = {"steered": False}

    @functools.wraps(prepare)
    def prepare_and_track(
        scheduler_output: Any, num_scheduled_tokens: np.ndarray, *args: Any, **kwargs: Any
    ) -> Any:
        out = prepare(scheduler_output, num_scheduled_tokens, *args, **kwargs)
        ids = runner.input_batch.req_ids[: len(num_scheduled_tokens)]
        groups = np.array([request_group(runner.requests.get(r)) for r in ids], dtype=np.int64)
        steered = bool(groups.any())
        if buffers and (steered or state["steered"]):  # unsteered steps after zeros: no copy
            # Tokens are laid out request by request, in input_batch order.
            rows = torch.from_numpy(np.repeat(groups, num_scheduled_tokens))
            first = buffers[0]
            cuda = first.device.type == "cuda"  # stream-ordered, no host sync per step
            first[: rows.shape[0]].copy_(rows.pin_memory() if cuda else rows, non_blocking=cuda)
            first[rows.shape[0] :].zero_()
            for buf in buffers[1:]:
                buf.copy_(first)
        state["steered"] = steered
        return out

    runner._prepare_inputs = prepare_and_track
    runner._icon2_tracking = True


class SteeringWorker:
    """Mixed into vLLM's worker (``worker_extension_cls``): methods for ``collective_rpc``."""

    def icon2_steering_layers(self) -> list[int]:
        """The steerable layers; also starts tracking the requests' groups (see module)."""
        runner = self.model_runner  # type: ignore[attr-defined]
        model = runner.get_model()
        track_groups(runner, model)
        return sorted(steering_buffers(model))

    def icon2_steering_norms(self) -> dict[int, float]:
        """Each steerable layer's table norm (all zeros between calls)."""
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        return {k: float(v.float().norm()) for k, v in steering_buffers(model).items()}

    def icon2_set_steering(self, groups: Mapping[int, Mapping[int, Sequence[float]]]) -> None:
        """Set every layer's table in place: ``groups`` maps a group (1 .. GROUPS−1) to its
        per-layer vectors; rows and layers not given get zeros (``{}`` clears everything).

        Vectors travel as lists of floats (vLLM's RPC serialises tensors that way anyway).
        """
        wanted = {int(g): {int(k): v for k, v in vecs.items()} for g, vecs in groups.items()}
        bad = [g for g in wanted if not 0 < g < GROUPS]
        if bad:
            raise ValueError(f"steering groups {bad} are outside 1..{GROUPS - 1}")
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        for layer, buf in steering_buffers(model).items():
            table = torch.zeros(buf.shape, dtype=torch.float32)
            for g, vecs in wanted.items():
                vec = vecs.get(layer)
                if vec is not None:
                    table[g] = torch.tensor(vec, dtype=torch.float32)
            buf.copy_(table)
