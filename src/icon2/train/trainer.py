"""``Icon2DPOTrainer``: TRL's ``DPOTrainer`` with the SPA and Wasserstein-DRO losses.

TRL 1.16 computes the whole DPO step (policy forward through a fused LM head that returns
per-token log-probs only, reference forward, sigmoid loss, metrics) in one private method. The
subclass therefore overrides only the public ``compute_loss``, and only for the training steps
of the ``spa`` and ``dro`` variants; ``dpo`` and every evaluation go to TRL unchanged, so eval
losses are plain DPO and comparable across variants.

* ``spa`` needs full policy and reference *logits* (the extrapolated model mixes logits), so it
  runs the models' ordinary forward rather than TRL's fused head, and costs one ``[2B, T, V]``
  logits tensor per model.
* ``dro`` needs each batch pair's row of the worst-case solution (:mod:`icon2.train.batches`
  carries the ``pair_index`` through TRL; :mod:`icon2.train.dro_state` holds the rows).

For every variant, answers flagged truncated are tokenized without the end-of-turn token TRL's
chat-template rendering appends (:func:`icon2.train.data.tokenize_truncated`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.dpo_config import DPOConfig
from trl.trainer.dpo_trainer import DPOTrainer

from icon2.train.batches import (
    PAIR_INDEX,
    Batch,
    PairIndexCollator,
    fused_logps,
    model_kwargs,
    with_pair_index,
    without_pair_index,
)
from icon2.train.callbacks import StepTimer, StepTiming
from icon2.train.data import tokenize_truncated, truncated_count
from icon2.train.distributed import (
    GlobalConfidenceWindow,
    solve_on_main,
)
from icon2.train.dro import WorstCase, solve_in_groups
from icon2.train.dro_pieces import tangent_pieces
from icon2.train.dro_state import DROState, training_confidences
from icon2.train.losses import (
    dpo_margin,
    dro_pair_losses,
    extrapolated_logps,
    sequence_logps,
    spa_loss,
)
from icon2.train.report import reward_metrics

if TYPE_CHECKING:  # the params are only needed for typing
    from icon2.core.params import DROParams, SPAParams

Variant = Literal["dpo", "spa", "dro"]


class Icon2DPOTrainer(DPOTrainer):
    """``DPOTrainer`` whose training loss is sigmoid DPO, SPA (eq. 10) or Wasserstein-DRO DPO.

    Extra metrics go through TRL's ``_metrics`` so they land in ``state.log_history``:
    ``spa/flagged_fraction``, ``spa/confidence``, ``spa/active``; ``dro/mean_shift``,
    ``dro/solve_seconds`` (cumulative), ``dro/weighted_loss``, ``dro/plain_loss``.

    Attributes:
        variant: The loss variant.
        step_timing: Total wall time and count of optimizer steps run by ``train``.
        dro: The worst case between solves and the solves' bookkeeping.
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
            kwargs["train_dataset"] = with_pair_index(kwargs.get("train_dataset"))
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
        self.add_callback(StepTimer(self.step_timing))
        self.dro = DROState(pieces=self._pieces.a.size)
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

    def _prepare_dataset(self, dataset: Any, processing_class: Any, *args: Any) -> Any:
        # TRL renders every conversational answer as an ended turn; a truncated one is not.
        prepared = super()._prepare_dataset(dataset, processing_class, *args)
        return tokenize_truncated(prepared, processing_class)

    @property
    def truncated_answers(self) -> int:
        """Answers of the training set tokenized without end-of-turn (flagged truncated)."""
        return truncated_count(self.train_dataset)

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
            return super().compute_loss(  # type: ignore[no-untyped-call]
                model, without_pair_index(inputs), return_outputs, num_items_in_batch
            )
        if self.variant == "spa":
            return self._spa_step_loss(model, inputs)
        return self._dro_step_loss(model, inputs)

    # --- SPA -------------------------------------------------------------------------------

    def _spa_step_loss(self, model: Any, inputs: Batch) -> torch.Tensor:
        labels = inputs["input_ids"][:, 1:]
        mask = inputs["completion_mask"][:, 1:]
        kwargs = model_kwargs(inputs)
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
        self._log_train_metrics(
            reward_metrics(
                self.accelerator.gather_for_metrics, self.beta, pol_w, pol_l, ref_w, ref_l
            )
        )
        return losses.mean()

    # --- DRO -------------------------------------------------------------------------------

    def _dro_step_loss(self, model: Any, inputs: Batch) -> torch.Tensor:
        if PAIR_INDEX not in inputs:
            raise ValueError(f"loss 'dro' needs the {PAIR_INDEX!r} column in training batches")
        self._maybe_resolve_dro()
        pol_w, pol_l = fused_logps(model, inputs)
        ref_w, ref_l = self._reference_logps(inputs)
        delta = dpo_margin(pol_w, pol_l, ref_w, ref_l, self.beta)
        alpha, q = self.dro.rows(inputs[PAIR_INDEX].cpu().numpy())  # plain DPO in the warm-up
        losses = dro_pair_losses(delta, alpha, q, support_min=self.dro_params.support_min)
        gather = self.accelerator.gather_for_metrics
        self._log_train_metrics(
            {
                # Σ_k q_ik is the transport pair i receives (its mean over all pairs is <= ε).
                "dro/mean_shift": gather(q.sum(dim=1).to(delta.device)).mean().item(),
                "dro/solve_seconds": self.dro.solve_seconds,
                "dro/weighted_loss": gather(losses.detach()).mean().item(),
                "dro/plain_loss": gather(-F.logsigmoid(delta.detach())).mean().item(),
            }
        )
        self._log_train_metrics(
            reward_metrics(
                self.accelerator.gather_for_metrics, self.beta, pol_w, pol_l, ref_w, ref_l
            )
        )
        return losses.mean()

    def _reference_logps(self, inputs: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.precompute_ref_logps:
            return inputs["ref_chosen_logps"].float(), inputs["ref_rejected_logps"].float()
        # TRL's own reference path (no grad, PEFT adapter switching); it forwards every
        # non-TRL key to the model, hence the pair index is dropped first.
        ref = self.ref_model if self.ref_model is not None else self.model
        chosen, rejected = self.compute_ref_log_probs(  # type: ignore[no-untyped-call]
            ref, without_pair_index(inputs)
        )
        return chosen.float(), rejected.float()

    def _maybe_resolve_dro(self) -> None:
        # Called in every micro-batch; global_step only moves after an optimizer step, so with
        # gradient accumulation the solve still happens once per resolve_every optimizer steps.
        # The warm-up is plain DPO (see DROParams.warmup_fraction).
        step = self.state.global_step
        if self.dro.due(step, self.dro_warmup_steps, self.dro_params.resolve_every):
            self.resolve_dro()

    def resolve_dro(self) -> WorstCase:
        """Recomputes ξ_i = σ(Δ_i) for every training pair and re-solves the worst-case LP.

        Returns:
            The new solution (rows in ascending pair index), also stored on the trainer.
        """
        start = time.perf_counter()
        index, xi = training_confidences(self)
        solved_from = time.perf_counter()
        params = self.dro_params
        # One LP on the main process; every rank gets the same weights.
        sol = solve_on_main(
            lambda: solve_in_groups(
                xi, params.eps, self._pieces, params.group_size, support_min=params.support_min
            )
        )
        done = time.perf_counter()
        self.dro.record(
            self.state.global_step,
            index,
            xi,
            sol,
            xi_seconds=solved_from - start,
            solve_seconds=done - solved_from,
        )
        return sol

    # --- metrics ---------------------------------------------------------------------------

    def _log_train_metrics(self, values: Mapping[str, float]) -> None:
        # TRL's log() averages everything appended here since the last logging step.
        for key, value in values.items():
            self._metrics["train"][key].append(value)
