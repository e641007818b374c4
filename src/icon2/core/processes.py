"""The processes of one run: which rank this is, and every rank's copy of an object.

``accelerate launch`` starts the processes; with one plain process every helper here is the
identity, so single-process runs are unchanged.
"""

from __future__ import annotations

import atexit
from typing import TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

T = TypeVar("T")


def process_state() -> PartialState:
    """The process group (created on first use; it also picks this rank's GPU).

    With several processes the group is destroyed when this process exits (``atexit``): a
    rank must not leave the interpreter with the backend's threads still running (a 2-rank
    gloo run once aborted at exit with "terminate called without an active exception"). It
    is a local step, no collective: ranks that finish early (the non-main ones, which write
    nothing) do not wait for the main one.
    """
    state = PartialState(cpu=not torch.cuda.is_available())
    global _EXIT_HOOKED
    if state.num_processes > 1 and not _EXIT_HOOKED:
        atexit.register(_leave, state)
        _EXIT_HOOKED = True
    return state


_EXIT_HOOKED = False


def _leave(state: PartialState) -> None:
    if torch.distributed.is_initialized():
        state.destroy_process_group()


def is_main_process() -> bool:
    return bool(process_state().is_main_process)


def all_ranks(obj: T) -> list[T]:
    """``obj`` from every process, in rank order (``[obj]`` with one process)."""
    if process_state().num_processes == 1:
        return [obj]
    return list(gather_object([obj]))
