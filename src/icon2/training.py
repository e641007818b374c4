"""Preference-optimisation training: the ``train`` params section and TRL wiring.

Training runs on TRL's own ``DPOTrainer``/``DPOConfig``. :func:`build_dpo_config` maps the
``train`` section onto a ``DPOConfig``; :func:`make_trainer` builds an
:class:`~icon2.trainer.Icon2DPOTrainer`, which only replaces the loss for the ``spa`` and ``dro``
variants (see :mod:`icon2.trainer`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import datasets
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from transformers import PreTrainedModel, PreTrainedTokenizerBase, SchedulerType
from trl.trainer.dpo_config import DPOConfig

from icon2.trainer import EvaluateAtEnd, Icon2DPOTrainer

__all__ = [
    "DROParams",
    "Icon2DPOTrainer",
    "SPAParams",
    "TrainParams",
    "build_dpo_config",
    "make_trainer",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SPAParams(_Section):
    """SPA self-refinement: label smoothing of pairs flagged as noisy by an extrapolated model."""

    alpha: float = Field(0.1, ge=0.0, le=1.0)
    k_percent: float = Field(10.0, gt=0.0, lt=100.0)
    window: int = Field(50, ge=1)
    warmup_fraction: float = Field(0.2, ge=0.0, le=1.0)
    lam: float = Field(0.5, ge=0.0)


class DROParams(_Section):
    """Wasserstein-DRO reweighting of the DPO loss (see :mod:`icon2.dro`)."""

    eps: float = Field(0.05, ge=0.0)
    pieces: int = Field(5, ge=1)
    t_min: float = Field(0.05, gt=0.0, lt=1.0)
    # Ξ = [support_min, 1]: with 0 the worst case parks the least confident pairs at ξ = 0,
    # where the clamped −log has no gradient; a small floor keeps them trainable.
    support_min: float = Field(0.05, ge=0.0, lt=1.0)
    group_size: int = Field(256, ge=1)
    # 0 = solve once at the start of training; n > 0 = re-solve every n optimizer steps.
    resolve_every: int = Field(0, ge=0)


class TrainParams(_Section):
    """The ``train`` section of ``params.yaml``."""

    loss: Literal["dpo", "spa", "dro"] = "dpo"
    beta: float = Field(0.1, gt=0.0)
    learning_rate: float = Field(5e-7, gt=0.0)
    num_train_epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(-1, ge=-1)  # -1 = train for num_train_epochs
    per_device_train_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    per_device_eval_batch_size: int = Field(4, ge=1)
    max_length: int = Field(1024, ge=16)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    lr_scheduler_type: str = "cosine"
    # Below 1 because transformers 5 reads a warm-up of 1.0 as "one step", not as a ratio.
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    logging_steps: int = Field(1, ge=1)
    eval_steps: int | None = Field(None, ge=1)  # None = evaluate once at the end
    precompute_ref_log_probs: bool = False
    gradient_checkpointing: bool = False
    spa: SPAParams = Field(default_factory=SPAParams)
    dro: DROParams = Field(default_factory=DROParams)

    @field_validator("max_steps")
    @classmethod
    def _check_max_steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (use num_train_epochs) or >= 1")
        return value

    @field_validator("lr_scheduler_type")
    @classmethod
    def _check_scheduler(cls, value: str) -> str:
        # Checked here so that a typo fails at params load time, naming the key, instead of
        # deep inside TrainingArguments once a model has been loaded.
        known = [s.value for s in SchedulerType]
        if value not in known:
            raise ValueError(f"unknown scheduler {value!r}; one of {known}")
        return value


def build_dpo_config(
    tp: TrainParams, output_dir: Path, *, seed: int, evaluate: bool = True
) -> DPOConfig:
    """TRL's ``DPOConfig`` for the ``train`` section.

    Args:
        tp: The ``train`` params section.
        output_dir: Trainer output directory (nothing is saved there: ``save_strategy="no"``).
        seed: Seed for TRL/transformers (model init, data order).
        evaluate: Whether an eval set exists; without one, step-wise evaluation is switched off
            (transformers rejects ``eval_strategy="steps"`` without an eval set).

    Returns:
        The config. With ``eval_steps = None`` its ``eval_strategy`` is ``"no"``;
        :func:`make_trainer` then adds a callback that evaluates once after the last step.
    """
    return DPOConfig(
        output_dir=str(output_dir),
        seed=seed,
        # The spa and dro losses are sigmoid DPO with per-pair changes made by Icon2DPOTrainer.
        loss_type=["sigmoid"],
        beta=tp.beta,
        learning_rate=tp.learning_rate,
        num_train_epochs=tp.num_train_epochs,
        max_steps=tp.max_steps,
        per_device_train_batch_size=tp.per_device_train_batch_size,
        per_device_eval_batch_size=tp.per_device_eval_batch_size,
        gradient_accumulation_steps=tp.gradient_accumulation_steps,
        max_length=tp.max_length,
        # TRL defaults bf16 to True when fp16 is off, so both flags are always set explicitly.
        bf16=tp.precision == "bf16",
        fp16=tp.precision == "fp16",
        lr_scheduler_type=tp.lr_scheduler_type,
        # transformers 5 dropped warmup_ratio; a float in [0, 1) for warmup_steps is a ratio.
        warmup_steps=tp.warmup_ratio,
        logging_steps=tp.logging_steps,
        eval_strategy="steps" if evaluate and tp.eval_steps is not None else "no",
        eval_steps=tp.eval_steps,
        # TRL defaults gradient checkpointing to on; transformers 5 renamed it (the old name
        # warns and is mirrored from the new one), so only the new name is set.
        activation_checkpointing=tp.gradient_checkpointing,
        # SPA extrapolates the reference model's logits in every step, so precomputed
        # reference log-probs cannot replace the reference forward.
        precompute_ref_log_probs=tp.precompute_ref_log_probs and tp.loss != "spa",
        report_to="none",
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
        # Unused columns are dropped by TRL's signature list; Icon2DPOTrainer adds the pair
        # index to that list, so the default (True) keeps exactly what the losses need.
        remove_unused_columns=True,
        dataloader_num_workers=0,
    )


def make_trainer(
    tp: TrainParams,
    *,
    model: PreTrainedModel,
    ref_model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset | None,
    output_dir: Path,
    seed: int,
) -> Icon2DPOTrainer:
    """Build the trainer for the ``train`` section.

    Args:
        tp: The ``train`` params section; ``tp.loss`` selects the variant.
        model: Policy to train.
        ref_model: Frozen reference model, or None to let TRL load a fresh copy of
            ``model``'s checkpoint.
        tokenizer: Tokenizer with a chat template.
        train_dataset: Conversational preference pairs: ``prompt`` (``[user msg]``),
            ``chosen`` and ``rejected`` (``[assistant msg]``), each a list of
            ``{"role", "content"}`` messages.
        eval_dataset: Same format, or None for no evaluation.
        output_dir: Trainer output directory.
        seed: Seed for TRL/transformers.

    Returns:
        The trainer; call ``.train()``.
    """
    evaluate = eval_dataset is not None
    config = build_dpo_config(tp, output_dir, seed=seed, evaluate=evaluate)
    callbacks = [EvaluateAtEnd()] if evaluate and tp.eval_steps is None else []
    return Icon2DPOTrainer(
        variant=tp.loss,
        spa=tp.spa,
        dro=tp.dro,
        model=model,
        ref_model=ref_model,
        args=config,
        processing_class=tokenizer,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        callbacks=callbacks,
    )
