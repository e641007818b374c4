"""Stage `pairs` (METHOD A4): chosen/rejected by steering +γ⁺ / γ⁻ along each criterion."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.io import write_json
from icon2.core.launch import cli_options, relaunch_generation
from icon2.core.processes import process_state
from icon2.core.provenance import provenance
from icon2.core.tables import PAIR_SCHEMA, read_kept, write_table
from icon2.engines.metered import write_cost
from icon2.model.loading import read_card
from icon2.stage import load_model, open_stage, user_errors
from icon2.steps.direction_file import (
    check_criteria,
    check_same_model,
    controlled_layers,
    load_directions,
)
from icon2.steps.pairs import steer_pairs
from icon2.steps.shards import ShardStore, shard_dir_for, shard_key


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Output of the model stage.")],
    directions: Annotated[Path, typer.Option(help="directions.safetensors.")],
    kept: Annotated[Path, typer.Option(help="kept.parquet from the filter stage.")],
    out: Annotated[Path, typer.Option(help="pairs.parquet to write.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    cost: Annotated[Path | None, typer.Option(help="Cost records (JSON) to write.")] = None,
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    options = cli_options(locals())  # this command's own options, to relaunch it unchanged
    p = open_stage(params)
    # Every input is checked before the model is loaded (and before any launch).
    table = read_kept(kept)
    if p.pairs.max_instructions is not None:
        table = table.head(p.pairs.max_instructions)
    card = read_card(model_dir)
    dfile = load_directions(directions)
    check_same_model(dfile, card, directions)
    check_criteria(dfile, table["criterion"].unique().to_list(), str(kept), directions)
    layers = controlled_layers(dfile, p.pairs.layers, card["num_layers"], directions)
    meta = provenance("pairs", p, {"directions": directions, "kept": kept}, card)
    # Finished shards wait here until the outputs are written: a killed run resumes. Another
    # run's shards are refused now, before any launch.
    key = shard_key(meta, "pairs")
    store = ShardStore(shard_dir_for(out), key, rows=table.height, size=p.pairs.shard_size)
    store.check()
    # With base.generation_accelerate_config set, this process only launches the ranks.
    relaunch_generation(p.base.generation_accelerate_config, Path(__file__), options)
    process_state()  # joins the process group (and picks this rank's GPU) before loading
    model, tokenizer, card = load_model(model_dir, p)
    made = steer_pairs(p, model_dir, model, tokenizer, table, dfile, layers, store=store)
    if made is None:
        return  # another process: its shards are in the folder; the main process writes
    pairs, counts, meter = made
    write_table(out, pairs, PAIR_SCHEMA, meta)
    write_json(metrics, counts)
    write_cost(cost, [meter])
    store.remove()
    typer.echo(f"pairs: {counts['instructions']} instructions -> {counts['pairs']} pairs -> {out}")


if __name__ == "__main__":
    typer.run(main)
