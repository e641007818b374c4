"""Stage `evaluate`: trained vs starting model on held-out prompts, judged locally."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import polars as pl
import typer

from icon2.chat import end_of_turn_ids, render_prompt
from icon2.evaluation import load_prompts
from icon2.generation import HFBackend, Sampling
from icon2.io import atomic_path, write_csv, write_json
from icon2.judge import Judge, LMJudge, RewardModelJudge
from icon2.models import load_local, load_source, resolve
from icon2.params import load_params
from icon2.stage import provenance, seed_everything, user_errors
from icon2.winrate import summarize


@user_errors
def main(
    base_dir: Annotated[Path, typer.Option(help="Starting model (the model stage).")],
    trained_dir: Annotated[Path, typer.Option(help="Trained checkpoint.")],
    prompts: Annotated[Path, typer.Option(help="Prompt file (instruction column).")],
    out: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    samples: Annotated[Path, typer.Option(help="JSONL of sample answer pairs to write.")],
    plots: Annotated[Path, typer.Option(help="CSV of outcome rates.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = load_params(params)
    cfg = p.evaluate
    seed_everything(p.base.seed)
    instructions, criteria = load_prompts(prompts, cfg.max_prompts)
    sampling = Sampling(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        repetition_penalty=cfg.repetition_penalty,
        seed=p.base.seed,
    )
    base, tok, base_card = load_local(base_dir, dtype=p.base.dtype, device=p.base.device)
    trained, trained_tok, trained_card = load_local(
        trained_dir, dtype=p.base.dtype, device=p.base.device
    )
    answers = {}
    for name, model, t in (("trained", trained, trained_tok), ("base", base, tok)):
        backend = HFBackend(model, t, stop_ids=end_of_turn_ids(t), batch_size=cfg.batch_size)
        answers[name] = backend.generate(
            [render_prompt(t, q, p.base.system_prompt) for q in instructions],
            sampling,
            desc=f"answers {name}",
        )
    del trained
    judge = _judge(cfg.judge, cfg.reward_model, base, tok, p.base.dtype, p.base.device)
    first = [g.text.strip() for g in answers["trained"]]
    second = [g.text.strip() for g in answers["base"]]
    pref = judge.prefer_first(instructions, first, second)
    summary = summarize(
        pref,
        np.array([g.token_count for g in answers["trained"]], dtype=float),
        np.array([g.token_count for g in answers["base"]], dtype=float),
        tie_margin=cfg.tie_margin,
        groups=criteria,
    )
    judge_name = cfg.reward_model or cfg.judge or f"{base_card['name']} (starting model)"
    meta = provenance("evaluate", p, ["evaluate"], {"prompts": prompts}, trained_card)
    write_json(
        out,
        {
            **summary,
            "judge": judge_name,
            "trained": trained_card["name"],
            "base": base_card["name"],
            "provenance": meta,
        },
    )
    with atomic_path(samples) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for i in range(min(cfg.samples, len(instructions))):
            fh.write(
                json.dumps(
                    {
                        "instruction": instructions[i],
                        "trained": first[i],
                        "base": second[i],
                        "p_trained_better": round(float(pref[i]), 4),
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    write_csv(
        plots,
        pl.DataFrame(
            {
                "outcome": ["win", "tie", "loss"],
                "rate": [summary["strict_win_rate"], summary["tie_rate"], summary["loss_rate"]],
            }
        ),
    )
    typer.echo(
        f"evaluate: win rate {summary['win_rate']:.3f} (LC {summary['lc_win_rate']:.3f}) "
        f"over {summary['n']} prompts, judge: {judge_name}"
    )


def _judge(
    judge: str | None, reward_model: str | None, base: object, tok: object, dtype: str, device: str
) -> Judge:
    if reward_model:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        src = resolve(reward_model)
        rm = AutoModelForSequenceClassification.from_pretrained(src.location).eval()
        return RewardModelJudge(rm, AutoTokenizer.from_pretrained(src.location))
    if judge:
        model, jtok = load_source(resolve(judge), dtype=dtype)
        model.eval()  # type: ignore[no-untyped-call]
        return LMJudge(model, jtok)
    return LMJudge(base, tok)  # type: ignore[arg-type]


if __name__ == "__main__":
    typer.run(main)
