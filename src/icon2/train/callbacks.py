"""Trainer callbacks: optimizer-step wall time, and one evaluation at the end of training."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


def _sync() -> None:
    # CUDA kernels run asynchronously; without a sync a wall-clock step time is meaningless.
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class StepTiming:
    """Accumulated wall time of optimizer steps (forward, backward, optimizer, DRO solves)."""

    steps: int = 0
    seconds: float = 0.0


class StepTimer(TrainerCallback):
    """Adds each optimizer step's wall time to a :class:`StepTiming`."""

    def __init__(self, timing: StepTiming) -> None:
        self.timing = timing
        self._start: float | None = None

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        _sync()
        self._start = time.perf_counter()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._start is not None:
            _sync()
            self.timing.seconds += time.perf_counter() - self._start
            self.timing.steps += 1
            self._start = None


class EvaluateAtEnd(TrainerCallback):
    """Requests one evaluation after the last optimizer step (``train.eval_steps = None``)."""

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.global_step >= state.max_steps:
            control.should_evaluate = True
