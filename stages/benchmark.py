"""Stage `benchmark`: human-labelled preference pairs scored by the trained and the starting
model — likelihood and implicit-reward accuracy, mean margin, bootstrap 95 % intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.io import write_json
from icon2.core.preferences import read_preference_file
from icon2.core.provenance import provenance
from icon2.core.tables import BENCHMARK_SCHEMA, write_table
from icon2.evaluate.benchmark import benchmark_line, benchmark_metrics, pair_table, score_pairs
from icon2.model.loading import read_card
from icon2.stage import load_model, open_stage, user_errors


@user_errors
def main(
    base_dir: Annotated[Path, typer.Option(help="Starting model (the reference).")],
    trained_dir: Annotated[Path, typer.Option(help="Trained checkpoint.")],
    file: Annotated[Path, typer.Option(help="Preference file (TRL format, JSONL/Parquet).")],
    out: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    details: Annotated[Path, typer.Option(help="Per-pair Parquet to write.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = open_stage(params)
    cfg = p.benchmark
    pairs = read_preference_file(file, limit=cfg.max_pairs)
    read_card(base_dir)
    read_card(trained_dir)
    base, tokenizer, base_card = load_model(base_dir, p)
    trained, _, trained_card = load_model(trained_dir, p)
    scores = score_pairs(
        trained,
        base,
        tokenizer,
        pairs,
        system=p.base.system_prompt if cfg.system_prompt else None,
        batch_size=cfg.batch_size,
    )
    table = pair_table(pairs, scores, beta=p.train.beta)
    seed = p.base.seed if cfg.seed is None else cfg.seed
    metrics = benchmark_metrics(table, seed=seed, resamples=cfg.resamples)
    meta = provenance("benchmark", p, {"file": file}, trained_card)
    meta["reference"] = {k: base_card.get(k) for k in ("name", "revision", "weights_sha256")}
    write_table(details, table, BENCHMARK_SCHEMA, meta)
    write_json(out, metrics)
    typer.echo(benchmark_line(metrics))


if __name__ == "__main__":
    typer.run(main)
