"""One engine at a time, and never beside the stage's models on the accelerator.

A vLLM engine reserves most of a GPU's memory (``vllm.gpu_memory_utilization``) for its
KV cache. A stage that starts a second engine before closing the first, or that starts one
while its Hugging Face models still sit on the GPU, runs out of memory there. The
:class:`EngineSession` a stage gets from :func:`icon2.engines.open_backend` therefore

* starts the engine at its first ``generate`` (after the checks a stage makes up front);
* moves the stage's HF models (the one it generates for and any ``resident`` others) to
  the host before the engine starts, and back to their devices once it has stopped;
* stops the engine when the stage leaves the ``with`` block, or after every call
  (``close_between_calls``) where the stage reads with its HF models between two
  generations (baselines' judge, the App. J grid's projections, SPA's labelling).

The HF engine needs none of this: it decodes with the stage's own model.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any

import torch

from icon2.engines.base import Backend, Generation, Sampling, SteeringInput

#: Device types that count as host memory: a model there is left where it is.
HOST = frozenset({"cpu", "meta"})


def _device(model: Any) -> torch.device | None:
    try:
        return next(model.parameters()).device  # type: ignore[no-any-return]
    except (StopIteration, AttributeError):
        return None


class EngineSession:
    """A :class:`Backend` whose engine is started on demand and stopped by :meth:`close`.

    Args:
        start: builds the engine (called at the first ``generate`` after a close).
        held: the stage's HF models, to move off the accelerator while the engine runs.
        close_between_calls: stop the engine (and bring the models back) after every call.
    """

    def __init__(
        self,
        start: Callable[[], Backend],
        held: Sequence[Any] = (),
        *,
        close_between_calls: bool = False,
    ) -> None:
        self._start = start
        self._held = list(held)
        self._moved: list[tuple[Any, torch.device]] = []
        self._engine: Backend | None = None
        self.close_between_calls = close_between_calls
        self.starts = 0  # engines started over the session's life (for logs and tests)

    @property
    def running(self) -> bool:
        return self._engine is not None

    def generate(
        self,
        prompts: Sequence[str],
        sampling: Sampling,
        *,
        vectors: SteeringInput | None = None,
        desc: str | None = None,
    ) -> list[Generation]:
        if self._engine is None:
            self._offload()
            self._engine = self._start()
            self.starts += 1
        try:
            return self._engine.generate(prompts, sampling, vectors=vectors, desc=desc)
        finally:
            if self.close_between_calls:
                self.close()

    def close(self) -> None:
        """Stop the engine (if running), free its memory, and put the models back."""
        engine, self._engine = self._engine, None
        if engine is not None:
            stop = getattr(engine, "close", None)
            if stop is not None:
                stop()
            del engine
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        for model, device in self._moved:
            model.to(device)
        self._moved = []

    def _offload(self) -> None:
        seen: set[int] = set()
        for model in self._held:
            device = _device(model)
            if device is None or device.type in HOST or id(model) in seen:
                continue
            seen.add(id(model))
            model.to("cpu")
            self._moved.append((model, device))
        if self._moved and torch.cuda.is_available():
            torch.cuda.empty_cache()
