"""The trainer's worst case between solves (METHOD part C): the LP rows by pair index, when
to solve again, and how the resulting weights relate to the pairs' confusion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from icon2.train.batches import PAIR_INDEX, fused_logps
from icon2.train.distributed import gather_confidences, rank_shard
from icon2.train.dro import WorstCase, pair_weights
from icon2.train.losses import dpo_margin

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


def correlation(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float | None:
    """Pearson correlation; None when either side has no spread (it is undefined)."""
    if a.size < 2 or float(np.std(a)) == 0.0 or float(np.std(b)) == 0.0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


@dataclass
class DROState:
    """Solution rows by pair index and bookkeeping of the solves.

    Attributes:
        pieces: K, the number of affine pieces (columns of ``alpha`` and ``q``).
        alpha, q: ``[max pair_index + 1, K]`` solution rows by pair index (None before the
            first solve); pairs absent from the training set keep plain-DPO rows.
        xi: ``[max pair_index + 1]`` ξ used by the last solve (NaN for absent pairs).
        solution: The last :class:`~icon2.train.dro.WorstCase`, rows in ascending pair index.
        weights: Each solved pair's gradient weight relative to plain DPO (``pair_weights``).
        weight_confusion_corr: Pearson correlation of ``weights`` with 1 − ξ (None when
            either has no spread).
        informative: Whether the last solve saw ξ that were not all equal.
        solves, solve_seconds, xi_seconds: Count of solves, time in the LPs, time in the
            no-grad passes computing ξ.
    """

    pieces: int
    alpha: FloatArray | None = None
    q: FloatArray | None = None
    xi: FloatArray | None = None
    solution: WorstCase | None = None
    weights: FloatArray | None = None
    weight_confusion_corr: float | None = None
    informative: bool = False
    solves: int = 0
    solve_seconds: float = 0.0
    xi_seconds: float = 0.0
    solved_step: int | None = None

    def due(self, step: int, warmup_steps: int, resolve_every: int) -> bool:
        """Whether to solve before this optimizer step: after the warm-up, then once (0) or
        every ``resolve_every`` steps; a solve that carried no information counts as none."""
        if step < warmup_steps:
            return False
        if self.solved_step is None:
            return True
        return resolve_every > 0 and step - self.solved_step >= resolve_every

    def record(
        self,
        step: int,
        index: np.ndarray[Any, np.dtype[np.int64]],
        xi: FloatArray,
        sol: WorstCase,
        *,
        xi_seconds: float,
        solve_seconds: float,
    ) -> None:
        """Store a solution whose rows are the pairs ``index`` (ascending) with ``xi``."""
        size, k = int(index.max()) + 1, self.pieces
        alpha, q = np.zeros((size, k)), np.zeros((size, k))
        alpha[:, 0] = 1.0  # plain-DPO rows for indices that never reach a batch
        alpha[index], q[index] = sol.alpha, sol.q
        full_xi = np.full(size, np.nan)
        full_xi[index] = xi
        self.alpha, self.q, self.xi, self.solution = alpha, q, full_xi, sol
        self.weights = pair_weights(xi, sol)
        self.weight_confusion_corr = correlation(self.weights, 1.0 - xi)
        self.xi_seconds += xi_seconds
        self.solve_seconds += solve_seconds
        self.solves += 1
        # A solve on ξ that are all equal is the symmetric (uniform) worst case: harmless, but
        # it says nothing about which pairs are confusing, so it is tried again next step.
        self.informative = np.unique(np.round(xi, 6)).size > 1
        self.solved_step = step if self.informative else None

    def rows(self, pair_index: np.ndarray[Any, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(α, q)`` rows ``[B, K]`` of a batch's pairs; plain DPO before the first solve."""
        if self.alpha is None or self.q is None:
            alpha = torch.zeros(len(pair_index), self.pieces)
            alpha[:, 0] = 1.0
            return alpha, torch.zeros(len(pair_index), self.pieces)
        return torch.from_numpy(self.alpha[pair_index]), torch.from_numpy(self.q[pair_index])


def training_confidences(
    trainer: Any,
) -> tuple[np.ndarray[Any, np.dtype[np.int64]], np.ndarray[Any, np.dtype[np.float64]]]:
    """``(pair indices, ξ)`` over ``trainer``'s whole training set (an ``Icon2DPOTrainer``),
    sorted by pair index: ξ_i = σ(Δ_i) of the current policy, each rank scoring its share."""
    dataset = trainer.train_dataset
    if not isinstance(dataset, Dataset):
        raise TypeError("loss 'dro' needs a map-style training Dataset")
    # Each rank scores its share of the pairs; gather_confidences below joins them.
    loader = DataLoader(
        trainer._remove_unused_columns(dataset.select(rank_shard(len(dataset)))),
        batch_size=trainer.args.precompute_ref_batch_size
        or trainer.args.per_device_eval_batch_size,
        collate_fn=trainer.data_collator,
        shuffle=False,
        num_workers=0,
    )
    indices, confidences = [], []
    policy = trainer._policy
    was_training = policy.training
    policy.eval()
    try:
        with torch.no_grad(), trainer._no_checkpointing(), trainer.accelerator.autocast():
            for raw in loader:
                batch = trainer._prepare_inputs(raw)
                pol_w, pol_l = fused_logps(policy, batch)
                ref_w, ref_l = trainer._reference_logps(batch)
                delta = dpo_margin(pol_w, pol_l, ref_w, ref_l, trainer.beta)
                confidences.append(torch.sigmoid(delta.double()).cpu())
                indices.append(batch[PAIR_INDEX].cpu())
    finally:
        policy.train(was_training)
    index = torch.cat(indices).numpy().astype(np.int64)
    index, xi = gather_confidences(index, torch.cat(confidences).numpy())
    # Rows are looked up by index, so duplicates would share a row and negatives wrap around.
    if np.unique(index).size != index.size or index.min() < 0:
        raise ValueError(f"the {PAIR_INDEX!r} column must hold distinct non-negative ints")
    order = np.argsort(index, kind="stable")
    return index[order], xi[order]
