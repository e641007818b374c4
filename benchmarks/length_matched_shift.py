"""Is the direction shift a length effect? (issue 23's diagnostic)

    python benchmarks/length_matched_shift.py                       # data/evaluate/alpaca_eval
    python benchmarks/length_matched_shift.py --answers <folder> --tokens 0 --tokens 48

Reads the ``evaluate`` stage's AlpacaEval export (``model_outputs.json``: the trained
model's answers; ``reference_outputs.json``: the starting model's) and measures the
direction shift as the stage does (every answer re-read by the starting model unsteered,
mean over its tokens at the controlled layers, starting-answer SDs, bootstrap 95 % CI),
once per ``--tokens`` K with both answers cut to their first K tokens (0 = whole answers,
which reproduces the stage's figures). A shift that holds at a K both answers reach does
not come from the trained model writing longer answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from icon2.core.params import load_params
from icon2.core.precision import machine
from icon2.evaluate.shift import answer_shift
from icon2.stage import load_model
from icon2.steps.direction_file import controlled_layers, load_directions


def main(
    answers: Annotated[Path, typer.Option(help="The evaluate stage's alpaca_eval folder.")] = Path(
        "data/evaluate/alpaca_eval"
    ),
    tokens: Annotated[list[int], typer.Option(help="Cut both answers to K tokens; 0 = all.")] = [  # noqa: B006
        0,
        48,
        96,
    ],
    model_dir: Annotated[Path, typer.Option(help="The model stage's output.")] = Path("data/model"),
    directions: Annotated[Path, typer.Option(help="directions.safetensors.")] = Path(
        "data/directions/directions.safetensors"
    ),
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = load_params(params)
    typer.echo(json.dumps({"machine": machine()}))
    trained = json.loads((answers / "model_outputs.json").read_text(encoding="utf-8"))
    base = json.loads((answers / "reference_outputs.json").read_text(encoding="utf-8"))
    instructions = [r["instruction"] for r in trained]
    if instructions != [r["instruction"] for r in base]:
        raise typer.BadParameter(f"{answers}: the two files answer different instructions")
    model, tok, card = load_model(model_dir, p)
    dfile = load_directions(directions)
    layers = controlled_layers(dfile, p.pairs.layers, card["num_layers"], directions)

    def cut(text: str, k: int) -> str:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return str(tok.decode(ids[:k])) if k else text

    def mean_tokens(texts: list[str]) -> float:
        return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts) / len(texts)

    for k in tokens:
        t = [cut(r["output"], k) for r in trained]
        b = [cut(r["output"], k) for r in base]
        shift = answer_shift(
            model,
            tok,
            instructions,
            t,
            b,
            dfile=dfile,
            layers=layers,
            system=p.base.system_prompt,
            batch_size=16,
            seed=p.base.seed,
            resamples=p.evaluate.bootstrap,
        )
        line = ", ".join(
            f"{c} {v['shift_sd']:+.2f} [{v['shift_sd_low']:+.2f}, {v['shift_sd_high']:+.2f}]"
            for c, v in shift.items()
        )
        typer.echo(
            f"K={k or 'all'}: mean tokens trained {mean_tokens(t):.1f}, starting "
            f"{mean_tokens(b):.1f}; {line}"
        )


if __name__ == "__main__":
    typer.run(main)
