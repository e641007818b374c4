"""The :class:`~icon2.train.memory.Setup` of a memory plan, from the ``train`` params, an
``accelerate`` config and command-line values (in that order of precedence)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icon2.core.configs import read_accelerate_config
from icon2.core.errors import InputError, ParamsError

if TYPE_CHECKING:  # pydantic only, but the plan needs no params module at import time
    from icon2.core.params import TrainSection


def from_accelerate(config: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`Setup` fields an ``accelerate`` config file decides (parsed YAML).

    Returns:
        ``gpus`` and ``sharding`` (and offload flags, ``precision`` when mixed precision is
        set) for ``distributed_type`` NO/MULTI_GPU/DEEPSPEED/FSDP.

    Raises:
        InputError: For another distributed type or FSDP sharding strategy.
    """
    kind = str(config.get("distributed_type", "NO"))
    out: dict[str, Any] = {"gpus": int(config.get("num_processes", 1) or 1)}
    mixed = str(config.get("mixed_precision", "no"))
    if mixed in ("bf16", "fp16"):
        out["precision"] = mixed
    if kind in ("NO", "MULTI_GPU", "MULTI_CPU"):
        out["sharding"] = "none"
    elif kind == "DEEPSPEED":
        ds = config.get("deepspeed_config") or {}
        stage = int(ds.get("zero_stage", 0))
        out["sharding"] = "none" if stage == 0 else f"zero{stage}"
        out["offload_optimizer"] = str(ds.get("offload_optimizer_device", "none")) != "none"
        out["offload_params"] = str(ds.get("offload_param_device", "none")) != "none"
    elif kind == "FSDP":
        fsdp = config.get("fsdp_config") or {}
        strategy = str(fsdp.get("fsdp_sharding_strategy", "FULL_SHARD"))
        by_strategy = {"FULL_SHARD": "fsdp", "SHARD_GRAD_OP": "zero2", "NO_SHARD": "none"}
        if strategy not in by_strategy:
            raise InputError(f"fsdp_sharding_strategy {strategy!r}: not one of {list(by_strategy)}")
        out["sharding"] = by_strategy[strategy]
        offload = bool(fsdp.get("fsdp_offload_params", False))
        out["offload_optimizer"] = out["offload_params"] = offload and strategy == "FULL_SHARD"
    else:
        raise InputError(
            f"distributed_type {kind!r} is not planned (NO, MULTI_GPU, DEEPSPEED, FSDP)"
        )
    return out


CHOICES: dict[str, tuple[str, ...]] = {
    "sharding": ("none", "zero1", "zero2", "zero3", "fsdp"),
    "precision": ("fp32", "bf16", "fp16"),
    "reference": ("model", "precomputed"),
    "loss": ("dpo", "spa", "dro"),
    "optimizer": ("adamw", "adamw_16bit"),
}


def check_choices(fields: Mapping[str, Any]) -> None:
    """Refuse a :class:`Setup` field value outside :data:`CHOICES`, naming its option.

    Raises:
        ParamsError: e.g. ``--sharding: 'zero4' is not one of (...)``.
    """
    for key, allowed in CHOICES.items():
        if key in fields and fields[key] not in allowed:
            raise ParamsError(f"--{key.replace('_', '-')}: {fields[key]!r} is not one of {allowed}")


def setup_fields(
    train: TrainSection | None,
    accelerate_config: Path | None,
    given: Mapping[str, Any],
    *,
    gpu_gib: float,
) -> dict[str, Any]:
    """The checked :class:`Setup` fields of a plan, from (lowest precedence first) the
    ``train`` section, the accelerate config (``accelerate_config``, else the one ``train``
    names) and ``given`` (command-line values; None = not given).

    Raises:
        ParamsError: a value outside :data:`CHOICES`.
        InputError: an unreadable accelerate config (:func:`read_accelerate_config`).
    """
    fields: dict[str, Any] = {"gpu_gib": gpu_gib}
    if train is not None:
        # SPA mixes reference logits in every step, so it always keeps the reference model.
        precomputed = train.precompute_ref_log_probs and train.loss != "spa"
        fields.update(
            # The plan is for a GPU, where `auto` resolves to bf16 on every bf16-capable one.
            precision="bf16" if train.precision == "auto" else train.precision,
            per_device_batch=train.per_device_train_batch_size,
            max_length=train.max_length,
            gradient_checkpointing=train.gradient_checkpointing,
            loss=train.loss,
            reference="precomputed" if precomputed else "model",
        )
        if accelerate_config is None and train.accelerate_config is not None:
            accelerate_config = Path(train.accelerate_config)
    if accelerate_config is not None:
        fields.update(from_accelerate(read_accelerate_config(accelerate_config)))
    fields.update({k: v for k, v in given.items() if v is not None})
    if fields.get("loss") == "spa" and given.get("reference") is None:
        fields["reference"] = "model"  # SPA mixes reference logits in every step
    check_choices(fields)
    return fields
