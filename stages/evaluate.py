"""Stage `evaluate`: trained vs starting model on held-out prompts, judged locally."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from icon2.core.io import write_csv, write_json, write_jsonl
from icon2.core.provenance import provenance
from icon2.core.tables import read_prompts
from icon2.engines import make_backend
from icon2.engines.base import Sampling
from icon2.evaluate.compare import (
    check_judge,
    headline_metrics,
    make_judge,
    outcome_frame,
    sample_rows,
)
from icon2.evaluate.winrate import summarize
from icon2.model.chat import render_prompt
from icon2.model.loading import read_card
from icon2.stage import load_model, open_stage, user_errors


@user_errors
def main(
    base_dir: Annotated[Path, typer.Option(help="Starting model (the model stage).")],
    trained_dir: Annotated[Path, typer.Option(help="Trained checkpoint.")],
    prompts: Annotated[Path, typer.Option(help="Prompt file (instruction column).")],
    out: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    samples: Annotated[Path, typer.Option(help="JSONL of sample answer pairs to write.")],
    details: Annotated[Path, typer.Option(help="JSON of the judge, per criterion, provenance.")],
    plots: Annotated[Path, typer.Option(help="CSV of outcome rates.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = open_stage(params)
    cfg = p.evaluate
    instructions, criteria = read_prompts(prompts, split="validation", limit=cfg.max_prompts)
    # Everything the stage will need is checked before the first answer is generated.
    check_judge(cfg.judge, cfg.reward_model)
    read_card(base_dir)
    read_card(trained_dir)
    sampling = Sampling(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        repetition_penalty=cfg.repetition_penalty,
        seed=p.base.seed,
    )
    base, tok, base_card = load_model(base_dir, p)
    trained, trained_tok, trained_card = load_model(trained_dir, p)
    answers = {}
    runs = (("trained", trained, trained_tok, trained_dir), ("base", base, tok, base_dir))
    for name, model, t, model_dir in runs:
        rendered = [render_prompt(t, q, p.base.system_prompt) for q in instructions]
        backend = make_backend(p, model_dir, model, t, batch_size=cfg.batch_size)
        answers[name] = backend.generate(rendered, sampling, desc=f"answers {name}")
    del trained
    judge, judge_name = make_judge(cfg.judge, cfg.reward_model, base, tok, p.base.dtype)
    first = [g.text.strip() for g in answers["trained"]]
    second = [g.text.strip() for g in answers["base"]]
    pref = judge.prefer_first(instructions, first, second)
    lengths = [np.array([g.token_count for g in answers[k]], float) for k in ("trained", "base")]
    summary = summarize(pref, *lengths, tie_margin=cfg.tie_margin, groups=criteria)
    meta = provenance("evaluate", p, {"prompts": prompts}, trained_card)
    judge_name = judge_name or f"{base_card['name']} (starting model)"
    write_json(out, headline_metrics(summary))
    write_json(details, {**summary, "judge": judge_name, "provenance": meta})
    write_jsonl(samples, sample_rows(instructions, first, second, pref, cfg.samples))
    write_csv(plots, outcome_frame(summary))
    typer.echo(
        f"evaluate: win rate {summary['win_rate']:.3f} (LC {summary['lc_win_rate']:.3f}) "
        f"over {summary['n']} prompts, judge: {judge_name}"
    )


if __name__ == "__main__":
    typer.run(main)
