"""Memory plan (not a DVC stage): estimated per-GPU memory of the `train` stage, and a verdict.

    python stages/memory.py --model data/model --params params.gpu.yaml \
        --accelerate-config configs/accelerate/zero3.yaml

Values come from, in order of precedence: the options below, the accelerate config (GPU
count, ZeRO stage / FSDP sharding, offload, mixed precision), the `train` section of
`--params` (batch, max length, precision, checkpointing, loss, precomputed reference), and
the defaults of `icon2.train.memory.Setup`. No model is loaded: only its config.json is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from icon2.core.errors import ParamsError
from icon2.core.params import load_params
from icon2.stage import user_errors
from icon2.train.memory import Setup, estimate, from_accelerate, read_accelerate_config, read_config


@user_errors
def main(
    model: Annotated[Path, typer.Option(help="Model directory or its config.json.")],
    params: Annotated[Path | None, typer.Option(help="Params file for the train settings.")] = None,
    accelerate_config: Annotated[
        Path | None, typer.Option(help="accelerate config (GPUs, ZeRO/FSDP, offload).")
    ] = None,
    gpus: Annotated[int | None, typer.Option(help="GPU count (processes).")] = None,
    sharding: Annotated[str | None, typer.Option(help="none|zero1|zero2|zero3|fsdp")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32|bf16|fp16")] = None,
    batch: Annotated[int | None, typer.Option(help="Pairs per GPU per micro-step.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Tokens per sequence.")] = None,
    reference: Annotated[str | None, typer.Option(help="model|precomputed")] = None,
    loss: Annotated[str | None, typer.Option(help="dpo|spa|dro")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adamw|adamw_16bit")] = None,
    checkpointing: Annotated[
        bool | None, typer.Option("--checkpointing/--no-checkpointing", help="Activation ckpt.")
    ] = None,
    gpu_gib: Annotated[float, typer.Option(help="Memory of one GPU, GiB.")] = 80.0,
) -> None:
    fields: dict[str, Any] = {"gpu_gib": gpu_gib}
    if params is not None:
        tp = load_params(params).train
        # SPA mixes reference logits in every step, so it always keeps the reference model.
        precomputed = tp.precompute_ref_log_probs and tp.loss != "spa"
        fields.update(
            precision=tp.precision,
            per_device_batch=tp.per_device_train_batch_size,
            max_length=tp.max_length,
            gradient_checkpointing=tp.gradient_checkpointing,
            loss=tp.loss,
            reference="precomputed" if precomputed else "model",
        )
        if accelerate_config is None and tp.accelerate_config is not None:
            accelerate_config = Path(tp.accelerate_config)
    if accelerate_config is not None:
        fields.update(from_accelerate(read_accelerate_config(accelerate_config)))
    given = {
        "gpus": gpus,
        "sharding": sharding,
        "precision": precision,
        "per_device_batch": batch,
        "max_length": max_length,
        "reference": reference,
        "loss": loss,
        "optimizer": optimizer,
        "gradient_checkpointing": checkpointing,
    }
    fields.update({k: v for k, v in given.items() if v is not None})
    if fields.get("loss") == "spa" and reference is None:
        fields["reference"] = "model"  # SPA mixes reference logits in every step
    _check_choices(fields)
    plan = estimate(read_config(model), Setup(**fields))
    typer.echo(plan.format())


_CHOICES = {
    "sharding": ("none", "zero1", "zero2", "zero3", "fsdp"),
    "precision": ("fp32", "bf16", "fp16"),
    "reference": ("model", "precomputed"),
    "loss": ("dpo", "spa", "dro"),
    "optimizer": ("adamw", "adamw_16bit"),
}


def _check_choices(fields: dict[str, Any]) -> None:
    for key, allowed in _CHOICES.items():
        if key in fields and fields[key] not in allowed:
            raise ParamsError(f"--{key.replace('_', '-')}: {fields[key]!r} is not one of {allowed}")


if __name__ == "__main__":
    typer.run(main)
