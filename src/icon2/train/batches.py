"""What the trainer adds to TRL's preference batches: the ``pair_index`` column (which row of
the DRO solution a pair uses) and the policy log-probabilities through TRL's fused LM head.

A ``pair_index`` column is added to the raw dataset before TRL tokenises it (``map``/``filter``
keep extra columns, and the filter that drops over-long prompts would shift positional
indices), and :class:`PairIndexCollator` stacks it into the batch around TRL's own collator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset

PAIR_INDEX = "pair_index"
# Batch keys that are not model inputs (TRL's own list plus the pair index).
_NON_MODEL_KEYS = frozenset(
    {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", PAIR_INDEX}
)

Batch = dict[str, Any]


@dataclass(frozen=True)
class PairIndexCollator:
    """Wraps a preference collator and adds the examples' ``pair_index`` as a ``[B]`` tensor."""

    inner: Callable[[list[Batch]], Batch]

    def __call__(self, examples: list[Batch]) -> Batch:
        """Collates with ``inner``; rows ``i`` and ``B + i`` of the batch are pair ``i``."""
        batch = self.inner(examples)
        if examples and PAIR_INDEX in examples[0]:
            batch[PAIR_INDEX] = torch.tensor([int(e[PAIR_INDEX]) for e in examples])
        return batch


def with_pair_index(dataset: Any) -> Dataset:
    """``dataset`` with a ``pair_index`` column (its row numbers unless one is already there)."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"loss 'dro' needs a map-style datasets.Dataset, got {type(dataset)}")
    if PAIR_INDEX in dataset.column_names:
        return dataset
    return dataset.add_column(PAIR_INDEX, list(range(len(dataset))))


def without_pair_index(inputs: Batch) -> Batch:
    """The batch as TRL expects it (it forwards every non-TRL key to the model)."""
    return {k: v for k, v in inputs.items() if k != PAIR_INDEX}


def model_kwargs(inputs: Batch) -> Batch:
    """The model inputs of a batch, without the KV cache."""
    return {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS} | {"use_cache": False}


def fused_logps(model: Any, inputs: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs ``(chosen [B], rejected [B])`` via TRL's fused LM head."""
    completion_mask = inputs["completion_mask"]
    labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
    out = model(**model_kwargs(inputs), labels=labels, fused_lm_head=True)
    logps = out.log_probs[:, -(completion_mask.size(1) - 1) :].sum(dim=1).float()
    chosen, rejected = logps.chunk(2, dim=0)
    return chosen, rejected
