"""Stage `synthesize` (METHOD A2): self-synthesized instructions, cleaned."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.io import write_json
from icon2.core.launch import cli_options, relaunch_generation
from icon2.core.params import load_params
from icon2.core.processes import process_state
from icon2.core.prompts import read_instructions
from icon2.core.provenance import provenance
from icon2.core.tables import INSTRUCTION_SCHEMA, write_table
from icon2.engines.metered import write_cost
from icon2.model.embeddings import minilm_embedder
from icon2.model.loading import pick_device, read_card
from icon2.stage import load_model, seed_everything, user_errors
from icon2.steps.shards import ShardStore, shard_dir_for, shard_key
from icon2.steps.synthesis import make_instructions


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Output of the model stage.")],
    file: Annotated[Path, typer.Option(help="External instructions (used if source=file).")],
    out: Annotated[Path, typer.Option(help="instructions.parquet to write.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    cost: Annotated[Path | None, typer.Option(help="Cost records (JSON) to write.")] = None,
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    options = cli_options(locals())  # this command's own options, to relaunch it unchanged
    p = load_params(params)
    cfg = p.synthesize
    seed = p.base.seed if cfg.seed is None else cfg.seed
    seed_everything(seed)
    external = read_instructions(file) if cfg.source == "file" else None
    inputs = {"model": model_dir} if external is None else {"model": model_dir, "file": file}
    record = provenance("synthesize", p, inputs, read_card(model_dir))
    # Finished shards of samples wait here until the outputs are written: a killed run
    # resumes. Another run's shards are refused now, before any launch.
    store = ShardStore(
        shard_dir_for(out), shard_key(record, "synthesize"), rows=cfg.count, size=cfg.shard_size
    )
    if external is None:
        store.check()
        # With base.generation_accelerate_config set, this process only launches the ranks.
        relaunch_generation(p.base.generation_accelerate_config, Path(__file__), options)
        process_state()  # joins the process group (and picks this rank's GPU) before loading
    # The embedder is loaded before generating, so a broken install is reported at once.
    device = str(pick_device(p.base.device))  # a GPU run embeds on the GPU too
    embed = minilm_embedder(device=device) if cfg.near_dup_threshold is not None else None
    model, tokenizer, card = load_model(model_dir, p)
    result = make_instructions(
        p, model_dir, model, tokenizer, external, embed=embed, seed=seed, target=out,
        store=None if external is not None else store,
    )  # fmt: skip
    if result is None:
        return  # another process: its shards are in the folder; the main process writes
    meta = {**record, "pre_query_template": result.template}
    write_table(out, result.kept, INSTRUCTION_SCHEMA, meta)
    write_json(metrics, result.metrics)
    write_cost(cost, [result.meter])
    store.remove()
    m = result.metrics
    also = f", other drops {result.dropped}" if result.dropped else ""
    typer.echo(f"synthesize: {m['raw']} raw -> {m['kept']} kept ({m['truncated']} truncated{also})")


if __name__ == "__main__":
    typer.run(main)
