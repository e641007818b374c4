"""Stage `synthesize` (METHOD A2): self-synthesized instructions, cleaned."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.chat import end_of_turn_ids, pre_query_template
from icon2.cleaning import INSTRUCTION_SCHEMA, clean, distinct_n, length_stats
from icon2.embeddings import minilm_embedder
from icon2.generation import HFBackend, Sampling
from icon2.io import read_instructions, write_json, write_table
from icon2.models import load_local
from icon2.params import load_params
from icon2.stage import provenance, seed_everything, user_errors
from icon2.synthesis import from_file, synthesize


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Output of the model stage.")],
    file: Annotated[Path, typer.Option(help="External instructions (used if source=file).")],
    out: Annotated[Path, typer.Option(help="instructions.parquet to write.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = load_params(params)
    cfg = p.synthesize
    seed = p.base.seed if cfg.seed is None else cfg.seed
    seed_everything(seed)
    model, tokenizer, card = load_local(model_dir, dtype=p.base.dtype, device=p.base.device)
    inputs: dict[str, Path] = {"model": model_dir}
    if cfg.source == "file":
        raw = from_file(read_instructions(file))
        inputs["file"] = file
        template = None
    else:
        template = cfg.pre_query_template or pre_query_template(tokenizer)
        backend = HFBackend(
            model, tokenizer, stop_ids=end_of_turn_ids(tokenizer), batch_size=cfg.batch_size
        )
        sampling = Sampling(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=seed,
        )
        raw = synthesize(
            backend, template, cfg.count, sampling, stop_at_newline=cfg.stop_at_newline
        )
    embed = minilm_embedder() if cfg.near_dup_threshold is not None else None
    kept, counts = clean(
        raw,
        min_chars=cfg.min_chars,
        max_chars=cfg.max_chars,
        near_dup_threshold=cfg.near_dup_threshold,
        embed=embed,
    )
    texts = kept["instruction"].to_list()
    meta = provenance("synthesize", p, ["synthesize"], inputs, card)
    meta["pre_query_template"] = template
    write_table(out, kept, INSTRUCTION_SCHEMA, meta)
    write_json(
        metrics, {"counts": counts, "distinct_2": distinct_n(texts, 2), **length_stats(texts)}
    )
    typer.echo(f"synthesize: {counts['raw']} raw -> {counts['kept']} kept -> {out}")


if __name__ == "__main__":
    typer.run(main)
