"""One entry point for every training run (the ``train`` stage, each ``spa@t`` iteration,
the benchmark): build the trainer in a scratch directory, train, time it, and save the
checkpoint with a model card that names its parent, its data and its params.

The stages train with :func:`train_and_gather` (every rank trains; the main process gets
the gathered weights and saves them with :meth:`Trained.save`) and report
:func:`train_metrics` / :func:`curve_metrics`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.io import atomic_dir, weights_hash
from icon2.core.params import TrainParams
from icon2.core.precision import Device, Resolved, compute_device
from icon2.core.processes import is_main_process
from icon2.model.loading import MODEL_CARD
from icon2.model.packing import PackingStats, pack_prefixes, packable
from icon2.train.config import make_trainer
from icon2.train.distributed import full_state_dict
from icon2.train.live import LiveCurves
from icon2.train.report import headline
from icon2.train.trainer import Icon2DPOTrainer

#: The weights a run updates: fp32 masters whatever ``base.dtype`` is. A 16-bit policy would
#: lose every update smaller than half its last bit (a 5e-7 step on a weight of 0.02 in
#: bf16), and only ZeRO keeps masters of its own; ``train.precision`` sets the compute.
POLICY_DTYPE = "float32"


@dataclass(frozen=True)
class TrainResult:
    trainer: Icon2DPOTrainer
    seconds: float
    packing: Resolved | None = None
    # The policy's backbone counts on this process: training, evaluation and DRO's
    # confidence passes together (None: not packed).
    packed: PackingStats | None = None

    @property
    def packing_record(self) -> dict[str, Any]:
        """The resolved ``train.packing`` and the share of padded positions computed."""
        if self.packing is None:
            return {}
        record: dict[str, Any] = self.packing.record()
        fraction = None if self.packed is None else self.packed.computed_fraction
        if fraction is not None:
            record["computed_fraction"] = round(fraction, 4)
        return record

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.trainer.state.log_history)

    @property
    def steps(self) -> int:
        return int(self.trainer.state.global_step)

    @property
    def dro_summary(self) -> dict[str, float | int]:
        """DRO's solves and how its weights relate to confusion (empty for other losses)."""
        if self.trainer.variant != "dro":
            return {}
        dro = self.trainer.dro
        out: dict[str, float | int] = {
            "dro_solves": dro.solves,
            "dro_solve_seconds": round(dro.solve_seconds, 4),
        }
        if dro.weight_confusion_corr is not None:
            out["dro_weight_confusion_corr"] = round(dro.weight_confusion_corr, 4)
        return out


def resolve_packing(requested: bool | str, device: Device) -> Resolved:
    """``train.packing``: ``auto`` packs on the CPU only (see :mod:`icon2.model.packing`)."""
    key = "train.packing"
    if requested != "auto":
        value = "on" if requested else "off"
        return Resolved(key, str(requested).lower(), value, "set in params")
    if device == "cpu":
        return Resolved(key, "auto", "on", "cpu: a forward costs the positions it computes")
    return Resolved(key, "auto", "off", "cuda: padded batches keep the fused attention kernels")


def _pack(
    packing: Resolved, policy: PreTrainedModel, ref: PreTrainedModel | None
) -> tuple[Resolved, PackingStats | None]:
    if packing.value != "on":
        return packing, None
    models = [policy] if ref is None else [policy, ref]
    if not all(packable(m) for m in models):  # both or neither: log-ratios of like layouts
        reason = "the packed mask needs SDPA attention without a sliding window"
        return Resolved(packing.key, packing.requested, "off", reason), None
    stats = [pack_prefixes(m) for m in models]
    return packing, stats[0]


def train(
    tp: TrainParams,
    *,
    policy: PreTrainedModel,
    ref: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset | None = None,
    seed: int,
    live: Path | None = None,
) -> TrainResult:
    """Train ``policy`` in place against ``ref`` with the ``train`` section ``tp``.

    TRL wants an output directory; nothing is saved there (``save_strategy="no"``), so it is
    a temporary one and the caller saves the checkpoint with :func:`save_checkpoint`.
    With ``live``, dvclive writes the per-step curves there while training runs.
    """
    policy.train()
    # The device the Trainer computes on (CUDA when visible), as for train.precision.
    packing, packed = _pack(resolve_packing(tp.packing, compute_device("auto")), policy, ref)
    print(
        f"packing: {packing.key} {packing.requested} -> {packing.value} ({packing.reason})",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="icon2-train-") as scratch:
        trainer = make_trainer(
            tp,
            model=policy,
            ref_model=ref,
            tokenizer=tokenizer,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            output_dir=Path(scratch),
            seed=seed,
        )
        if live is not None:
            trainer.add_callback(LiveCurves(live))
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    return TrainResult(trainer, seconds, packing, packed)


def save_checkpoint(
    out_dir: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    parent: dict[str, Any],
    name: str,
    extra: dict[str, Any],
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Save weights, tokenizer and a card recording the parent model and ``extra``.

    ``state`` is the full state dict gathered from a sharded run (ZeRO-3/FSDP), where
    ``model``'s own parameters are only this rank's shards; None saves ``model`` as it is.
    """
    model.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    card = {
        **{k: parent[k] for k in ("num_layers", "hidden_size", "dtype", "revision")},
        "name": name,
        "kind": "trained",
        "parent": parent["name"],
        "parent_weights_sha256": parent["weights_sha256"],
        "weights_sha256": weights_hash(out_dir),
        **extra,
    }
    (out_dir / MODEL_CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


def needs_reference(tp: TrainParams) -> bool:
    """Whether training needs a second, frozen copy of the starting model as the reference.

    Precomputed reference log-probs come from the starting policy before training, so DPO
    and DRO need no second model in memory; SPA mixes reference logits in every step.
    """
    return not (tp.precompute_ref_log_probs and tp.loss != "spa")


@dataclass(frozen=True)
class Trained:
    """A finished run on the main process, with the full weights gathered for saving."""

    result: TrainResult
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    state: dict[str, torch.Tensor] | None  # None: save ``model``'s own parameters

    def save(
        self, out_dir: Path, *, parent: dict[str, Any], name: str, extra: dict[str, Any]
    ) -> dict[str, Any]:
        """Write the checkpoint to ``out_dir`` atomically (:func:`save_checkpoint`'s card)."""
        with atomic_dir(out_dir) as tmp:
            return save_checkpoint(
                tmp,
                self.model,
                self.tokenizer,
                parent=parent,
                name=name,
                extra=extra,
                state=self.state,
            )


def train_and_gather(
    tp: TrainParams,
    *,
    policy: PreTrainedModel,
    ref: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset | None = None,
    seed: int,
    live: Path | None = None,
) -> Trained | None:
    """:func:`train` on every process, then gather the trained weights (a collective: every
    rank takes part) for the main process, the only one that writes outputs.

    Returns:
        The run and its weights on the main process; None on the other ranks.
    """
    result = train(
        tp,
        policy=policy,
        ref=ref,
        tokenizer=tokenizer,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        seed=seed,
        live=live,
    )
    state = full_state_dict(result.trainer)
    if not is_main_process():
        return None
    return Trained(result, policy, tokenizer, state)


def curve_metrics(result: TrainResult) -> dict[str, Any]:
    """The headline of the logged training curves plus DRO's summary (empty for other
    losses)."""
    return {**headline(result.history), **result.dro_summary}


def train_metrics(
    result: TrainResult, train_dataset: datasets.Dataset, eval_dataset: datasets.Dataset | None
) -> dict[str, Any]:
    """The ``train`` stage's metrics: pair counts, optimizer steps, training time (s) and
    :func:`curve_metrics`."""
    return {
        "train_pairs": len(train_dataset),
        "validation_pairs": 0 if eval_dataset is None else len(eval_dataset),
        "optimizer_steps": result.steps,
        "train_seconds": round(result.seconds, 2),
        **curve_metrics(result),
    }


def run_record(result: TrainResult) -> dict[str, Any]:
    """How a run was spread, for its checkpoint's card: accelerate's distributed type (NO,
    MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED), the process count and, on CUDA, this process's
    peak of allocated GPU memory in GiB (what ``stages/memory.py`` plans)."""
    accelerator = result.trainer.accelerator
    record: dict[str, Any] = {
        "distributed_type": str(accelerator.distributed_type.value),
        "processes": int(accelerator.num_processes),
        "packing": result.packing_record,
    }
    if torch.cuda.is_available():
        record["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return record
