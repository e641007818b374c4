"""Stage `signals@<method>`: evaluation signals that need no judge, and the judge's
discrimination: reward accuracy and margin (95 % CIs) on the comparison's common held-out
set — the validation pairs of every method in `compare.methods` pooled, so that every method
is scored on the same pairs and none trained on them — and the share of non-tie judgements."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from icon2.core.io import write_json
from icon2.core.tables import read_pairs
from icon2.evaluate.signals import common_held_out, judge_free_signals, pool_files, signals_line
from icon2.stage import load_model, open_stage, user_errors


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Starting model (the reference).")],
    trained_dir: Annotated[Path, typer.Option(help="Trained checkpoint.")],
    pool_root: Annotated[
        list[Path],
        typer.Option(
            help="A file or folder among the stage's DVC deps; every compare.methods pair file "
            "must be one or lie in one (repeat the option)."
        ),
    ],
    evaluation: Annotated[Path, typer.Option(help="The evaluate stage's metrics JSON.")],
    out: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = open_stage(params)
    methods = {str(m): f for m, f in p.compare.methods.items()}
    files = pool_files(methods, pool_root)
    held = common_held_out({m: read_pairs(f) for m, f in zip(methods, files, strict=True)})
    ev = json.loads(evaluation.read_text())
    base, tokenizer, _ = load_model(model_dir, p)
    trained, _, _ = load_model(trained_dir, p)
    result = judge_free_signals(
        base,
        trained,
        tokenizer,
        held=held,
        tie_rate=ev["tie_rate"],
        beta=p.train.beta,
        batch_size=p.evaluate.batch_size,
        seed=p.base.seed,
        resamples=p.evaluate.bootstrap,
    )
    write_json(out, result)
    typer.echo(signals_line(result))


if __name__ == "__main__":
    typer.run(main)
