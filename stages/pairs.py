"""Stage `pairs` (METHOD A4): chosen/rejected by steering +γ⁺ / γ⁻ along each criterion."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from icon2 import direction_file
from icon2.chat import end_of_turn_ids
from icon2.errors import InputError
from icon2.generation import HFBackend, Sampling
from icon2.io import read_table, write_json, write_table
from icon2.models import check_layers, load_local
from icon2.pairs import PAIR_SCHEMA, generate_pairs
from icon2.params import load_params
from icon2.stage import provenance, seed_everything, user_errors
from icon2.steering import middle_third


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Output of the model stage.")],
    directions: Annotated[Path, typer.Option(help="directions.safetensors.")],
    kept: Annotated[Path, typer.Option(help="kept.parquet from the filter stage.")],
    out: Annotated[Path, typer.Option(help="pairs.parquet to write.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = load_params(params)
    cfg = p.pairs
    seed_everything(p.base.seed)
    model, tokenizer, card = load_local(model_dir, dtype=p.base.dtype, device=p.base.device)
    dfile = direction_file.load(directions)
    direction_file.check_same_model(dfile, card, directions)
    layers = cfg.layers or middle_third(card["num_layers"])
    check_layers(layers, card["num_layers"], "pairs.layers")
    check_layers(
        [x for x in layers if x in dfile.layers] or [0],
        card["num_layers"],
        f"pairs.layers (not in {directions})",
    )
    table = read_table(kept, {c: pl.String() for c in ("id", "instruction", "criterion", "split")})
    if cfg.max_instructions is not None:
        table = table.head(cfg.max_instructions)
    backend = HFBackend(
        model, tokenizer, stop_ids=end_of_turn_ids(tokenizer), batch_size=cfg.batch_size
    )
    sampling = Sampling(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        repetition_penalty=cfg.repetition_penalty,
        seed=p.base.seed,
    )
    pairs, counts = generate_pairs(
        backend,
        tokenizer,
        table,
        dfile,
        gamma_pos=cfg.gamma_pos,
        gamma_neg=cfg.gamma_neg,
        layers=layers,
        scale=cfg.gamma_scale,
        sampling=sampling,
        system=p.base.system_prompt,
    )
    if pairs.height == 0:
        raise InputError(
            f"pairs: all {counts['instructions']} pairs were dropped (empty: {counts['empty']}, "
            f"truncated: {counts['truncated']}, identical: {counts['identical']}); raise "
            f"pairs.max_new_tokens or the size of the push (pairs.gamma_pos/gamma_neg)"
        )
    meta = provenance("pairs", p, ["pairs"], {"directions": directions, "kept": kept}, card)
    write_table(out, pairs, PAIR_SCHEMA, meta)
    counts["train"] = pairs.filter(pairs["split"] == "train").height
    counts["validation"] = pairs.height - counts["train"]
    write_json(metrics, counts)
    typer.echo(f"pairs: {counts['instructions']} instructions -> {counts['pairs']} pairs -> {out}")


if __name__ == "__main__":
    typer.run(main)
