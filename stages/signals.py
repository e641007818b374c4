"""Stage `signals@<method>`: evaluation signals that need no judge, and the judge's
discrimination (held-out reward accuracy, direction shift, share of non-tie judgements)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from icon2.core.io import write_json
from icon2.core.tables import read_pairs
from icon2.evaluate.signals import held_out, judge_free_signals, read_answers, signals_line
from icon2.stage import load_model, open_stage, user_errors
from icon2.steps.direction_file import check_same_model, controlled_layers, load_directions


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Starting model (the reference).")],
    trained_dir: Annotated[Path, typer.Option(help="Trained checkpoint.")],
    directions: Annotated[Path, typer.Option(help="directions.safetensors.")],
    pairs: Annotated[Path, typer.Option(help="The pairs it trained on (validation split used).")],
    samples: Annotated[Path, typer.Option(help="The evaluate stage's samples.jsonl.")],
    evaluation: Annotated[Path, typer.Option(help="The evaluate stage's metrics JSON.")],
    out: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = open_stage(params)
    held = held_out(read_pairs(pairs))
    answers = read_answers(samples)
    ev = json.loads(evaluation.read_text())
    base, tokenizer, card = load_model(model_dir, p)
    trained, _, _ = load_model(trained_dir, p)
    dfile = load_directions(directions)
    check_same_model(dfile, card, directions)
    result = judge_free_signals(
        base,
        trained,
        tokenizer,
        held=held,
        answers=answers,
        dfile=dfile,
        layers=controlled_layers(dfile, p.pairs.layers, card["num_layers"], directions),
        tie_rate=ev["tie_rate"],
        beta=p.train.beta,
        system=p.base.system_prompt,
        batch_size=p.evaluate.batch_size,
    )
    write_json(out, result)
    typer.echo(signals_line(result))


if __name__ == "__main__":
    typer.run(main)
