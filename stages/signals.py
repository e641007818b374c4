"""Stage `signals@<method>`: evaluation signals that need no judge, and the judge's
discrimination (held-out reward accuracy, direction shift, share of non-tie judgements)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import torch
import typer

from icon2.core.errors import InputError
from icon2.core.io import write_json
from icon2.core.layers import resolve_layers
from icon2.core.tables import read_pairs
from icon2.evaluate.signals import direction_shift, projections, reward_accuracy, summarize_shift
from icon2.model.chat import render
from icon2.model.logprobs import response_logps
from icon2.model.states import last_token_states
from icon2.stage import load_model, open_stage, user_errors
from icon2.steps.direction_file import check_same_model, load_directions


def _held_out(pairs: pl.DataFrame) -> tuple[list[str], list[str], list[str], str | None]:
    """(user turns, chosen texts, rejected texts, the one system turn) of the validation split."""
    rows = pairs.filter(pl.col("split") == "validation").to_dicts()
    systems = {
        next((m["content"] for m in r["prompt"] if m["role"] == "system"), None) for r in rows
    }
    if len(systems) > 1:
        raise InputError("held-out pairs use several system prompts; expected one")
    user = [next(m["content"] for m in r["prompt"] if m["role"] == "user") for r in rows]
    chosen = ["".join(m["content"] for m in r["chosen"]) for r in rows]
    rejected = ["".join(m["content"] for m in r["rejected"]) for r in rows]
    return user, chosen, rejected, next(iter(systems), None)


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
    bs = p.evaluate.batch_size
    held = _held_out(read_pairs(pairs))
    answers = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    if not answers:
        raise InputError(f"{samples}: no answers to read; raise evaluate.samples")
    ev = json.loads(evaluation.read_text())
    base, tokenizer, card = load_model(model_dir, p)
    trained, _, _ = load_model(trained_dir, p)
    result: dict[str, Any] = {"held_out_pairs": len(held[0])}
    # 1. Held-out reward accuracy: DPO's implicit reward, reference = the starting model.
    user, chosen, rejected, system = held
    if user:
        lp = [
            response_logps(m, tokenizer, user, y, system=system, batch_size=bs)[0].numpy()
            for m in (trained, base)
            for y in (chosen, rejected)
        ]
        acc = reward_accuracy(lp[0], lp[1], lp[2], lp[3], beta=p.train.beta)
        result.update(reward_accuracy=acc["reward_accuracy"], reward_margin=acc["reward_margin"])
    # 2. Direction shift: both models' answers re-read by the starting model, unsteered.
    dfile = load_directions(directions)
    check_same_model(dfile, card, directions)
    layers = resolve_layers(
        p.pairs.layers,
        card["num_layers"],
        "pairs.layers",
        default="middle",
        within=dfile.layers,
        source=str(directions),
    )
    rows = [dfile.layers.index(x) for x in layers]
    head = (
        []
        if p.base.system_prompt is None
        else [{"role": "system", "content": p.base.system_prompt}]
    )

    def read(key: str) -> torch.Tensor:
        texts = [
            render(
                tokenizer,
                [
                    *head,
                    {"role": "user", "content": a["instruction"]},
                    {"role": "assistant", "content": a[key]},
                ],
                add_generation_prompt=False,
            )
            for a in answers
        ]
        return last_token_states(base, tokenizer, texts, layers=layers, batch_size=bs)

    st, sb = read("trained"), read("base")
    dirs = {c: (d.direction[rows], d.contrastive_norm[rows]) for c, d in dfile.criteria.items()}
    shift = direction_shift(
        {c: projections(st, u, s) for c, (u, s) in dirs.items()},
        {c: projections(sb, u, s) for c, (u, s) in dirs.items()},
    )
    result.update(answers=len(answers), **summarize_shift(shift))
    # 3. The judge's discrimination: the share of judgements that are not ties.
    result["judge_discrimination"] = 1.0 - float(ev["tie_rate"])
    write_json(out, result)
    ra = result.get("reward_accuracy")
    typer.echo(
        f"signals: held-out reward accuracy {'n/a' if ra is None else f'{ra:.3f}'}, "
        f"direction shift {result['direction_shift']:+.4f}, "
        f"judge discrimination {result['judge_discrimination']:.3f}"
    )


if __name__ == "__main__":
    typer.run(main)
