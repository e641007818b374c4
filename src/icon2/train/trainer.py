"""``Icon2DPOTrainer``: TRL's ``DPOTrainer`` with the SPA and Wasserstein-DRO losses.

TRL 1.16 computes the whole DPO step (policy forward through a fused LM head that returns
per-token log-probs only, reference forward, sigmoid loss, metrics) in one private method. The
subclass therefore overrides only the public ``compute_loss``, and only for the training steps
of the ``spa`` and ``dro`` variants; ``dpo`` and every evaluation go to TRL unchanged, so eval
losses are plain DPO and comparable across variants.

* ``spa`` needs full policy and reference *logits* (the extrapolated model mixes logits), so it
  runs the models' ordinary forward rather than TRL's fused head, and costs one ``[2B, T, V]``
  logits tensor per model.
* ``dro`` needs each batch pair's row of the worst-case solution. A ``pair_index`` column is
  added to the raw dataset before TRL tokenises it (``map``/``filter`` keep extra columns, and
  the filter that drops over-long prompts would shift positional indices), is kept by TRL's
  column pruning via ``_set_signature_columns_if_needed`` and is stacked into the batch by a
  wrapper around TRL's own collator.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.dpo_config import DPOConfig
from trl.trainer.dpo_trainer import DPOTrainer

from icon2.train.distributed import (
    GlobalConfidenceWindow,
    gather_confidences,
    rank_shard,
    solve_on_main,
)
from icon2.train.dro import (
    WorstCase,
    dro_pair_losses,
    pair_weights,
    solve_in_groups,
    tangent_pieces,
)
from icon2.train.losses import (
    dpo_margin,
    extrapolated_logps,
    sequence_logps,
    spa_loss,
)

if TYPE_CHECKING:  # training.py imports this module; the params are only needed for typing
    from icon2.core.params import DROParams, SPAParams

Variant = Literal["dpo", "spa", "dro"]
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


def _sync() -> None:
    # CUDA kernels run asynchronously; without a sync a wall-clock step time is meaningless.
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class StepTiming:
    """Accumulated wall time of optimizer steps (forward, backward, optimizer, DRO solves)."""

    steps: int = 0
    seconds: float = 0.0


class _StepTimer(TrainerCallback):
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


def _model_kwargs(inputs: Batch) -> Batch:
    return {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS} | {"use_cache": False}


def _fused_logps(model: Any, inputs: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs ``(chosen [B], rejected [B])`` via TRL's fused LM head."""
    completion_mask = inputs["completion_mask"]
    labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
    out = model(**_model_kwargs(inputs), labels=labels, fused_lm_head=True)
    logps = out.log_probs[:, -(completion_mask.size(1) - 1) :].sum(dim=1).float()
    chosen, rejected = logps.chunk(2, dim=0)
    return chosen, rejected


class Icon2DPOTrainer(DPOTrainer):
    """``DPOTrainer`` whose training loss is sigmoid DPO, SPA (eq. 10) or Wasserstein-DRO DPO.

    Extra metrics go through TRL's ``_metrics`` so they land in ``state.log_history``:
    ``spa/flagged_fraction``, ``spa/confidence``, ``spa/active``; ``dro/mean_shift``,
    ``dro/solve_seconds`` (cumulative), ``dro/weighted_loss``, ``dro/plain_loss``.

    Attributes:
        variant: The loss variant.
        step_timing: Total wall time and count of optimizer steps run by ``train``.
        dro_solve_seconds: Total time spent in the LP solves.
        dro_xi_seconds: Total time of the no-grad passes computing ξ for all training pairs.
        dro_solves: Number of solves so far.
        dro_alpha, dro_q: ``[max pair_index + 1, K]`` solution rows by pair index (None before
            the first solve); pairs absent from the training set keep plain-DPO rows.
        dro_xi: ``[max pair_index + 1]`` ξ used by the last solve (NaN for absent pairs).
        dro_solution: The last :class:`~icon2.dro.WorstCase`, rows in ascending pair index.
    """

    args: DPOConfig  # DPOTrainer always holds a DPOConfig; narrowed for the type checker

    def __init__(self, *, variant: Variant, spa: SPAParams, dro: DROParams, **kwargs: Any) -> None:
        """Creates the trainer.

        Args:
            variant: ``"dpo"``, ``"spa"`` or ``"dro"``.
            spa: SPA settings (used when ``variant == "spa"``).
            dro: DRO settings (used when ``variant == "dro"``).
            **kwargs: Passed to ``DPOTrainer`` (``model``, ``ref_model``, ``args``, ...).

        Raises:
            ValueError: If the variant is unknown or the TRL configuration conflicts with it.
        """
        if variant not in ("dpo", "spa", "dro"):
            raise ValueError(f"variant must be 'dpo', 'spa' or 'dro', got {variant!r}")
        args = kwargs.get("args")
        if variant == "spa" and args is not None and args.precompute_ref_log_probs:
            raise ValueError(
                "loss 'spa' needs reference logits; set precompute_ref_log_probs=False"
            )
        if variant == "dro":
            kwargs["train_dataset"] = _with_pair_index(kwargs.get("train_dataset"))
        super().__init__(**kwargs)
        if variant != "dpo":
            self._check_plain_sigmoid(variant)
        if variant == "spa" and self.ref_model is None:
            raise ValueError("loss 'spa' needs an explicit reference model (its logits)")
        self.variant: Variant = variant
        self.spa_params = spa
        self.dro_params = dro
        # Window and percentile over the global batch when training on several processes.
        self._window = GlobalConfidenceWindow(size=spa.window, k_percent=spa.k_percent)
        self._pieces = tangent_pieces(dro.pieces, t_min=dro.t_min)
        self.step_timing = StepTiming()
        self.add_callback(_StepTimer(self.step_timing))
        self.dro_alpha: np.ndarray[Any, np.dtype[np.float64]] | None = None
        self.dro_q: np.ndarray[Any, np.dtype[np.float64]] | None = None
        self.dro_xi: np.ndarray[Any, np.dtype[np.float64]] | None = None
        self.dro_solution: WorstCase | None = None
        self.dro_solve_seconds = 0.0
        self.dro_xi_seconds = 0.0
        self.dro_solves = 0
        self.dro_weights: np.ndarray[Any, np.dtype[np.float64]] | None = None
        self.dro_weight_confusion_corr: float | None = None
        self.dro_informative = False
        self._dro_solved_step: int | None = None
        if variant == "dro":
            self.data_collator = PairIndexCollator(self.data_collator)

    def _check_plain_sigmoid(self, variant: str) -> None:
        # spa/dro replace TRL's loss with their own sigmoid-DPO variants; TRL options that
        # alter that loss would silently be ignored, so reject them.
        conflicts = {
            "loss_type": self.loss_types != ["sigmoid"],
            "f_divergence_type": self.f_divergence_type != "reverse_kl",
            "ld_alpha": self.ld_alpha is not None,
            "use_weighting": self.use_weighting,
            "router_aux_loss_coef": self.aux_loss_enabled,
        }
        bad = [name for name, flag in conflicts.items() if flag]
        if bad:
            raise ValueError(f"loss {variant!r} supports only plain sigmoid DPO; unset {bad}")

    @property
    def dro_warmup_steps(self) -> int:
        """Plain-DPO steps before the first solve: the warm-up fraction of the run, and at
        least one step whenever the fraction is positive (Δ ≡ 0 before any step)."""
        fraction = self.dro_params.warmup_fraction
        if fraction == 0:
            return 0
        # The learning rate is ~0 during the schedule's own warm-up, so the policy only
        # starts to differ from the reference after it.
        lr_warmup = self.args.get_warmup_steps(self.state.max_steps) if self.state.max_steps else 0
        return max(1, math.ceil(fraction * self.state.max_steps), lr_warmup + 1)

    @property
    def train_step_seconds(self) -> float:
        """Total wall time of the optimizer steps so far (including DRO solves)."""
        return self.step_timing.seconds

    @property
    def _policy(self) -> Any:
        # Trainer types `model` as optional; it is always set once __init__ has run.
        return self.model

    @contextlib.contextmanager
    def _no_checkpointing(self) -> Iterator[None]:
        # No-grad forwards gain nothing from checkpointing (and warn with reentrant checkpoints).
        kwargs = self.args.gradient_checkpointing_kwargs
        with disable_gradient_checkpointing(
            self._policy, kwargs if isinstance(kwargs, dict) else None
        ):
            yield

    def _set_signature_columns_if_needed(self) -> None:
        # TRL keeps only its own columns when pruning unused ones; the pair index must survive.
        super()._set_signature_columns_if_needed()  # type: ignore[no-untyped-call]
        if self._signature_columns is not None and PAIR_INDEX not in self._signature_columns:
            self._signature_columns.append(PAIR_INDEX)

    def compute_loss(
        self,
        model: Any,
        inputs: Batch,
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        """Training loss of the variant; TRL's DPO loss for ``dpo`` and for evaluation."""
        if self.variant == "dpo" or not self._policy.training or return_outputs:
            plain = {k: v for k, v in inputs.items() if k != PAIR_INDEX}
            return super().compute_loss(  # type: ignore[no-untyped-call]
                model, plain, return_outputs, num_items_in_batch
            )
        if self.variant == "spa":
            return self._spa_step_loss(model, inputs)
        return self._dro_step_loss(model, inputs)

    # --- SPA -------------------------------------------------------------------------------

    def _spa_step_loss(self, model: Any, inputs: Batch) -> torch.Tensor:
        labels = inputs["input_ids"][:, 1:]
        mask = inputs["completion_mask"][:, 1:]
        kwargs = _model_kwargs(inputs)
        # Ordinary forwards (not TRL's fused head): extrapolation mixes whole logit vectors.
        pol_logits = model(**kwargs).logits[:, :-1]
        ref_model: Any = self.ref_model  # not None: checked in __init__
        with torch.no_grad(), self._no_checkpointing():
            ref_logits = ref_model(**kwargs).logits[:, :-1]
        pol_w, pol_l = sequence_logps(pol_logits, labels, mask).chunk(2)
        ref_w, ref_l = sequence_logps(ref_logits, labels, mask).chunk(2)
        ext = extrapolated_logps(pol_logits.detach(), ref_logits, labels, mask, self.spa_params.lam)
        ext_w, ext_l = ext.chunk(2)
        delta = dpo_margin(pol_w, pol_l, ref_w, ref_l, self.beta)
        conf = torch.sigmoid(dpo_margin(ext_w, ext_l, ref_w, ref_l, self.beta))
        # Refinement stays off for the first warmup_fraction of the optimizer steps.
        active = self.state.global_step >= self.spa_params.warmup_fraction * self.state.max_steps
        losses, z = spa_loss(delta, conf, self._window, alpha=self.spa_params.alpha, active=active)
        gather = self.accelerator.gather_for_metrics
        self._log_train_metrics(
            {
                "spa/flagged_fraction": gather(z).mean().item(),
                "spa/confidence": gather(conf).mean().item(),
                "spa/active": float(active),
            }
        )
        self._log_reward_metrics(pol_w, pol_l, ref_w, ref_l)
        return losses.mean()

    # --- DRO -------------------------------------------------------------------------------

    def _dro_step_loss(self, model: Any, inputs: Batch) -> torch.Tensor:
        if PAIR_INDEX not in inputs:
            raise ValueError(f"loss 'dro' needs the {PAIR_INDEX!r} column in training batches")
        self._maybe_resolve_dro()
        pol_w, pol_l = _fused_logps(model, inputs)
        ref_w, ref_l = self._reference_logps(inputs)
        delta = dpo_margin(pol_w, pol_l, ref_w, ref_l, self.beta)
        rows = inputs[PAIR_INDEX].cpu().numpy()
        if self.dro_alpha is None or self.dro_q is None:  # warm-up: plain DPO rows
            k = self._pieces.a.size
            alpha = torch.zeros(len(rows), k)
            alpha[:, 0] = 1.0
            q = torch.zeros(len(rows), k)
        else:
            alpha = torch.from_numpy(self.dro_alpha[rows])
            q = torch.from_numpy(self.dro_q[rows])
        losses = dro_pair_losses(delta, alpha, q, support_min=self.dro_params.support_min)
        gather = self.accelerator.gather_for_metrics
        self._log_train_metrics(
            {
                # Σ_k q_ik is the transport pair i receives (its mean over all pairs is <= ε).
                "dro/mean_shift": gather(q.sum(dim=1).to(delta.device)).mean().item(),
                "dro/solve_seconds": self.dro_solve_seconds,
                "dro/weighted_loss": gather(losses.detach()).mean().item(),
                "dro/plain_loss": gather(-F.logsigmoid(delta.detach())).mean().item(),
            }
        )
        self._log_reward_metrics(pol_w, pol_l, ref_w, ref_l)
        return losses.mean()

    def _reference_logps(self, inputs: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.precompute_ref_logps:
            return inputs["ref_chosen_logps"].float(), inputs["ref_rejected_logps"].float()
        # TRL's own reference path (no grad, PEFT adapter switching); it forwards every
        # non-TRL key to the model, hence the pair index is dropped first.
        plain = {k: v for k, v in inputs.items() if k != PAIR_INDEX}
        ref = self.ref_model if self.ref_model is not None else self.model
        chosen, rejected = self.compute_ref_log_probs(ref, plain)  # type: ignore[no-untyped-call]
        return chosen.float(), rejected.float()

    def _maybe_resolve_dro(self) -> None:
        # Called in every micro-batch; global_step only moves after an optimizer step, so with
        # gradient accumulation the solve still happens once per resolve_every optimizer steps.
        step, every = self.state.global_step, self.dro_params.resolve_every
        if step < self.dro_warmup_steps:
            return  # still warming up with plain DPO (see DROParams.warmup_fraction)
        if self._dro_solved_step is not None and (
            every == 0 or step - self._dro_solved_step < every
        ):
            return
        self.resolve_dro()
        # A solve on ξ that are all equal is the symmetric (uniform) worst case: harmless, but
        # it says nothing about which pairs are confusing, so it is tried again next step.
        xi = self.dro_xi[~np.isnan(self.dro_xi)] if self.dro_xi is not None else np.zeros(1)
        self.dro_informative = np.unique(np.round(xi, 6)).size > 1
        self._dro_solved_step = step if self.dro_informative else None

    def resolve_dro(self) -> WorstCase:
        """Recomputes ξ_i = σ(Δ_i) for every training pair and re-solves the worst-case LP.

        Returns:
            The new solution (rows in ascending pair index), also stored on the trainer.
        """
        start = time.perf_counter()
        index, xi = self._training_confidences()
        solved_from = time.perf_counter()
        params = self.dro_params
        # One LP on the main process; every rank gets the same weights.
        sol = solve_on_main(
            lambda: solve_in_groups(
                xi, params.eps, self._pieces, params.group_size, support_min=params.support_min
            )
        )
        done = time.perf_counter()
        size, k = int(index.max()) + 1, self._pieces.a.size
        alpha, q = np.zeros((size, k)), np.zeros((size, k))
        alpha[:, 0] = 1.0  # plain-DPO rows for indices that never reach a batch
        alpha[index], q[index] = sol.alpha, sol.q
        full_xi = np.full(size, np.nan)
        full_xi[index] = xi
        self.dro_alpha, self.dro_q, self.dro_xi, self.dro_solution = alpha, q, full_xi, sol
        self.dro_weights = pair_weights(xi, sol)
        self.dro_weight_confusion_corr = _correlation(self.dro_weights, 1.0 - xi)
        self.dro_xi_seconds += solved_from - start
        self.dro_solve_seconds += done - solved_from
        self.dro_solves += 1
        return sol

    def _training_confidences(
        self,
    ) -> tuple[np.ndarray[Any, np.dtype[np.int64]], np.ndarray[Any, np.dtype[np.float64]]]:
        """``(pair indices, ξ)`` over the whole training set, sorted by pair index."""
        dataset = self.train_dataset
        if not isinstance(dataset, Dataset):
            raise TypeError("loss 'dro' needs a map-style training Dataset")
        # Each rank scores its share of the pairs; gather_confidences below joins them.
        loader = DataLoader(
            self._remove_unused_columns(dataset.select(rank_shard(len(dataset)))),
            batch_size=self.args.precompute_ref_batch_size or self.args.per_device_eval_batch_size,
            collate_fn=self.data_collator,
            shuffle=False,
            num_workers=0,
        )
        indices, confidences = [], []
        policy = self._policy
        was_training = policy.training
        policy.eval()
        try:
            with torch.no_grad(), self._no_checkpointing(), self.accelerator.autocast():
                for raw in loader:
                    batch = self._prepare_inputs(raw)
                    pol_w, pol_l = _fused_logps(policy, batch)
                    ref_w, ref_l = self._reference_logps(batch)
                    delta = dpo_margin(pol_w, pol_l, ref_w, ref_l, self.beta)
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

    # --- metrics ---------------------------------------------------------------------------

    def _log_train_metrics(self, values: Mapping[str, float]) -> None:
        # TRL's log() averages everything appended here since the last logging step.
        for key, value in values.items():
            self._metrics["train"][key].append(value)

    def _log_reward_metrics(
        self, pol_w: torch.Tensor, pol_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor
    ) -> None:
        # The subset of TRL's DPO metrics that does not need its fused-head extras.
        gather = self.accelerator.gather_for_metrics
        chosen = self.beta * (pol_w - ref_w).detach()
        rejected = self.beta * (pol_l - ref_l).detach()
        self._log_train_metrics(
            {
                "rewards/chosen": gather(chosen).mean().item(),
                "rewards/rejected": gather(rejected).mean().item(),
                "rewards/accuracies": gather((chosen > rejected).float()).mean().item(),
                "rewards/margins": gather(chosen - rejected).mean().item(),
                "logps/chosen": gather(pol_w.detach()).mean().item(),
                "logps/rejected": gather(pol_l.detach()).mean().item(),
            }
        )


def _with_pair_index(dataset: Any) -> Dataset:
    """``dataset`` with a ``pair_index`` column (its row numbers unless one is already there)."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"loss 'dro' needs a map-style datasets.Dataset, got {type(dataset)}")
    if PAIR_INDEX in dataset.column_names:
        return dataset
    return dataset.add_column(PAIR_INDEX, list(range(len(dataset))))


def _correlation(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float | None:
    """Pearson correlation; None when either side has no spread (it is undefined)."""
    if a.size < 2 or float(np.std(a)) == 0.0 or float(np.std(b)) == 0.0:
        return None
    return float(np.corrcoef(a, b)[0, 1])
