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
from typing import Annotated

import typer

from icon2.core.configs import read_config
from icon2.core.params import load_params
from icon2.stage import user_errors
from icon2.train.memory import Setup, estimate
from icon2.train.memory_setup import setup_fields


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
    train = None if params is None else load_params(params).train
    fields = setup_fields(train, accelerate_config, given, gpu_gib=gpu_gib)
    typer.echo(estimate(read_config(model), Setup(**fields)).format())


if __name__ == "__main__":
    typer.run(main)
