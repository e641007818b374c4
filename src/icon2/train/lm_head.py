"""TRL's fused LM head, scoring only the completion tokens on the CPU too.

TRL 1.16's fused head (``add_fused_lm_head``) projects through the vocabulary only the
positions whose label counts (the answer tokens) on Triton devices; elsewhere it scores
every position, prompt and padding included, so that a compiled graph on accelerators such
as Neuron keeps one tile shape. Eager CPU training has no such graph, and the vocabulary
projection (49152 x 576 for SmolLM2, a fifth of the model's matmul work) is then spent on
positions whose log-probabilities are masked away. :func:`score_completions_only` makes
TRL take its compact path on the CPU: the same log-probabilities (to float reordering) from
the answer positions alone; the kernel itself still runs TRL's torch tiles there.

TRL decides this in ``trl.trainer.utils`` through its private ``_use_triton`` name; the
patch wraps that one name (the kernels keep their own reference) and is a no-op where TRL
no longer has it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import trl.trainer.utils as trl_utils

_PATCHED = "_icon2_compact_on_cpu"


def score_completions_only() -> bool:
    """Make TRL's fused head score answer positions only on the CPU; True if in effect."""
    original: Callable[[torch.device], bool] | None = getattr(trl_utils, "_use_triton", None)
    if original is None:
        return False
    if getattr(original, _PATCHED, False):
        return True

    def compact(device: torch.device) -> bool:
        return device.type == "cpu" or original(device)

    setattr(compact, _PATCHED, True)
    setattr(trl_utils, "_use_triton", compact)  # noqa: B010  # a private name of TRL's
    return True
