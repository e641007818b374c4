"""Stage `baselines@<method>` (METHOD A7): one baseline's pairs on the `pairs` instructions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from icon2.core.errors import InputError
from icon2.core.io import write_json
from icon2.core.provenance import provenance
from icon2.core.tables import read_kept, write_table
from icon2.engines import make_backend
from icon2.engines.base import Sampling
from icon2.evaluate.judge import LMJudge
from icon2.evaluate.metered import stage_meter, write_cost
from icon2.evaluate.scorers import make_scorer
from icon2.stage import load_model, open_stage, user_errors
from icon2.steps import baseline_pairs as run
from icon2.steps.baselines import BASELINES, check_method


@user_errors
def main(
    method: Annotated[str, typer.Option(help=f"One of {', '.join(BASELINES)}.")],
    model_dir: Annotated[Path, typer.Option(help="Output of the model stage.")],
    kept: Annotated[Path, typer.Option(help="kept.parquet from the filter stage.")],
    out: Annotated[Path, typer.Option(help="pairs.parquet to write.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write (counts).")],
    cost: Annotated[Path, typer.Option(help="Cost records (JSON) to write.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    if check_method(method) not in BASELINES:
        raise InputError(f"{method!r} is not a baseline; its pairs come from the `pairs` stage")
    p = open_stage(params)
    cfg, pc = p.baselines, p.pairs
    table = read_kept(kept)
    if pc.max_instructions is not None:
        table = table.head(pc.max_instructions)
    model, tokenizer, card = load_model(model_dir, p)
    greedy = Sampling(
        max_new_tokens=pc.max_new_tokens,
        temperature=pc.temperature,
        top_p=pc.top_p,
        repetition_penalty=pc.repetition_penalty,
        seed=p.base.seed,
    )
    stage = f"baselines@{method}"
    inp = run.BaselineInputs(
        backend=make_backend(p, model_dir, model, tokenizer, batch_size=pc.batch_size),
        tokenizer=tokenizer,
        kept=table,
        greedy=greedy,
        sampled=Sampling(
            max_new_tokens=pc.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            repetition_penalty=pc.repetition_penalty,
            seed=p.base.seed,
        ),
        system=p.base.system_prompt,
        generation=stage_meter(stage, method, "response generation", p.base.device),
        annotation=stage_meter(stage, method, "preference annotation", p.base.device),
    )
    if method == "sampling_ranking":
        scorer = make_scorer(
            cfg.reward_model,
            cfg.judge,
            (model, tokenizer, card["name"]),
            dtype=p.base.dtype,
            batch_size=cfg.batch_size,
        )
        choices, counts = run.sampling_ranking(inp, scorer, cfg.samples_ranking)
        decided_by = scorer.name
    elif method == "self_rewarding":
        judge = LMJudge(model, tokenizer, batch_size=cfg.batch_size)
        choices, counts = run.self_rewarding(inp, judge, tie_margin=cfg.tie_margin)
        decided_by = f"self-judge:{card['name']} (pairwise, both orders)"
    elif method == "self_refine":
        choices, counts = run.self_refine(inp, cfg.samples_refine, p.base.seed)
        decided_by = "none: chosen = refined answer, rejected = a seeded-random original"
    else:
        prompts = {c: (pp.positive, pp.negative) for c, pp in p.directions.prompts.items()}
        choices, counts = run.direct_prompting(inp, prompts)
        decided_by = "none: chosen/rejected under the criterion's positive/negative system prompt"
    pairs = run.pair_table(inp, choices, method=method, scorer=decided_by)
    if pairs.height == 0:
        raise InputError(
            f"{stage}: every pair was dropped ({counts}); raise pairs.max_new_tokens or check "
            f"the scorer"
        )
    meta = provenance("baselines", p, {"kept": kept}, card)
    write_table(out, pairs, run.BASELINE_PAIR_SCHEMA, meta)
    train = pairs.filter(pl.col("split") == "train").height
    write_json(
        metrics,
        {
            "instructions": table.height,
            "pairs": pairs.height,
            "train": train,
            "validation": pairs.height - train,
            "dropped": counts,
        },
    )
    write_cost(cost, [inp.generation, inp.annotation])
    typer.echo(
        f"{stage}: {table.height} instructions -> {pairs.height} pairs ({decided_by}) -> {out}"
    )


if __name__ == "__main__":
    typer.run(main)
