"""Stage `model`: materialise base.model as a local Hugging Face directory (tracked output)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.io import atomic_dir
from icon2.core.params import load_params
from icon2.model.loading import materialise, resolve
from icon2.stage import user_errors


@user_errors
def main(
    out: Annotated[Path, typer.Option(help="Output model directory.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = load_params(params).base
    source = resolve(p.model)
    with atomic_dir(out) as tmp:
        card = materialise(
            source, tmp, revision=p.revision, dtype=p.dtype, trust_remote_code=p.trust_remote_code
        )
    typer.echo(
        f"model {card['name']}: {card['num_layers']} layers, d={card['hidden_size']} -> {out}"
    )


if __name__ == "__main__":
    typer.run(main)
