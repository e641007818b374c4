"""Stage `evaluate`: trained vs starting model on held-out prompts: judged locally, the
direction shift of the trained model's answers (with 95 % CIs), and both models' answers
in AlpacaEval's format for an external judge."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.io import atomic_dir, write_csv, write_json, write_jsonl
from icon2.core.prompts import read_prompts
from icon2.core.provenance import provenance
from icon2.evaluate.compare import (
    alpaca_eval_rows,
    answer,
    check_judge,
    headline_metrics,
    judge_answers,
    make_judge,
    outcome_frame,
    sample_rows,
)
from icon2.evaluate.shift import answer_shift, shift_line, summarize_shift
from icon2.model.loading import read_card
from icon2.stage import load_model, open_stage, user_errors
from icon2.steps.direction_file import check_same_model, controlled_layers, load_directions


@user_errors
def main(
    base_dir: Annotated[Path, typer.Option(help="Starting model (the model stage).")],
    trained_dir: Annotated[Path, typer.Option(help="Trained checkpoint.")],
    prompts: Annotated[Path, typer.Option(help="Prompt file (instruction column).")],
    directions: Annotated[Path, typer.Option(help="directions.safetensors (direction shift).")],
    out: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    samples: Annotated[Path, typer.Option(help="JSONL of sample answer pairs to write.")],
    details: Annotated[Path, typer.Option(help="JSON of the judge, per criterion, provenance.")],
    plots: Annotated[Path, typer.Option(help="CSV of outcome rates.")],
    alpaca_eval: Annotated[
        Path, typer.Option(help="Folder for model_outputs.json / reference_outputs.json.")
    ],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = open_stage(params)
    cfg = p.evaluate
    instructions, criteria = read_prompts(prompts, split="validation", limit=cfg.max_prompts)
    # Everything the stage will need is checked before the first answer is generated.
    check_judge(cfg.judge, cfg.reward_model)
    dfile = load_directions(directions)
    check_same_model(dfile, read_card(base_dir), directions)
    read_card(trained_dir)
    base, tok, base_card = load_model(base_dir, p)
    layers = controlled_layers(dfile, p.pairs.layers, base_card["num_layers"], directions)
    trained, trained_tok, trained_card = load_model(trained_dir, p)
    # One engine at a time; with vLLM the other model leaves the GPU too.
    answers = answer(p, trained_dir, trained, trained_tok, instructions, "trained", [base])
    base_answers = answer(p, base_dir, base, tok, instructions, "base", [trained])
    del trained
    judge, judge_name = make_judge(cfg.judge, cfg.reward_model, base, tok, p.base.dtype)
    v = judge_answers(
        judge, instructions, answers, base_answers, tie_margin=cfg.tie_margin, groups=criteria
    )
    shift = answer_shift(
        base,
        tok,
        instructions,
        v.trained,
        v.base,
        dfile=dfile,
        layers=layers,
        system=p.base.system_prompt,
        batch_size=cfg.batch_size,
        seed=p.base.seed,
        resamples=cfg.bootstrap,
    )
    meta = provenance("evaluate", p, {"prompts": prompts, "directions": directions}, trained_card)
    judge_name = judge_name or f"{base_card['name']} (starting model)"
    write_json(out, {**headline_metrics(v.summary), **summarize_shift(shift)})
    write_json(
        details,
        {
            **v.summary,
            "judge": judge_name,
            "direction_shift": {"layers": layers, "criteria": shift},
            "provenance": meta,
        },
    )
    write_jsonl(samples, sample_rows(instructions, v.trained, v.base, v.pref, cfg.samples))
    write_csv(plots, outcome_frame(v.summary))
    with atomic_dir(alpaca_eval) as folder:
        for name, texts, generator in (
            ("model_outputs.json", v.trained, f"icon2:{trained_dir.as_posix()}"),
            ("reference_outputs.json", v.base, f"{base_card['name']} (starting model)"),
        ):
            write_json(folder / name, alpaca_eval_rows(instructions, texts, generator))
    typer.echo(
        f"evaluate: win rate {v.summary['win_rate']:.3f} (LC {v.summary['lc_win_rate']:.3f}) "
        f"over {v.summary['n']} prompts, judge: {judge_name}"
    )
    typer.echo(shift_line(shift))


if __name__ == "__main__":
    typer.run(main)
