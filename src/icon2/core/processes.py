"""The processes of one run: which rank this is, and every rank's copy of an object.

``accelerate launch`` starts the processes; with one plain process every helper here is the
identity, so single-process runs are unchanged.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

T = TypeVar("T")


def process_state() -> PartialState:
    """The process group (created on first use; it also picks this rank's GPU)."""
    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return bool(process_state().is_main_process)


def all_ranks(obj: T) -> list[T]:
    """``obj`` from every process, in rank order (``[obj]`` with one process)."""
    if process_state().num_processes == 1:
        return [obj]
    return list(gather_object([obj]))
