"""Stage `synthesize` (METHOD A2): self-synthesized instructions, cleaned."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.errors import InputError
from icon2.core.io import write_json
from icon2.core.params import load_params
from icon2.core.provenance import provenance
from icon2.core.tables import INSTRUCTION_SCHEMA, read_instructions, write_table
from icon2.engines import make_backend
from icon2.engines.base import Sampling
from icon2.evaluate.metered import MeteredBackend, stage_meter, write_cost
from icon2.model.chat import pre_query_template
from icon2.model.embeddings import minilm_embedder
from icon2.stage import load_model, seed_everything, user_errors
from icon2.steps.cleaning import clean, distinct_n, length_stats
from icon2.steps.synthesis import from_file, synthesize


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Output of the model stage.")],
    file: Annotated[Path, typer.Option(help="External instructions (used if source=file).")],
    out: Annotated[Path, typer.Option(help="instructions.parquet to write.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    cost: Annotated[Path | None, typer.Option(help="Cost records (JSON) to write.")] = None,
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = load_params(params)
    cfg = p.synthesize
    seed = p.base.seed if cfg.seed is None else cfg.seed
    seed_everything(seed)
    external = read_instructions(file) if cfg.source == "file" else None
    # The embedder is loaded before generating, so a broken install is reported at once.
    embed = minilm_embedder() if cfg.near_dup_threshold is not None else None
    model, tokenizer, card = load_model(model_dir, p)
    inputs: dict[str, Path] = {"model": model_dir}
    # Every method starts from these instructions: shared work, outside the ratio (A8).
    meter = stage_meter("synthesize", "shared", "response generation", p.base.device)
    template = None
    if external is not None:
        raw = from_file(external)
        inputs["file"] = file
    else:
        template = cfg.pre_query_template or pre_query_template(tokenizer)
        sampling = Sampling(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=seed,
        )
        backend = make_backend(p, model_dir, model, tokenizer, batch_size=cfg.batch_size)
        backend = MeteredBackend(backend, meter, tokenizer)
        raw = synthesize(
            backend, template, cfg.count, sampling, stop_at_newline=cfg.stop_at_newline
        )
    kept, counts = clean(
        raw,
        min_chars=cfg.min_chars,
        max_chars=cfg.max_chars,
        near_dup_threshold=cfg.near_dup_threshold,
        embed=embed,
    )
    if kept.height == 0:
        dropped = {k: v for k, v in counts.items() if k not in ("raw", "kept") and v}
        raise InputError(
            f"synthesize: all {counts['raw']} samples were dropped by the cleaning rules "
            f"{dropped} (synthesize.min_chars={cfg.min_chars}, max_chars={cfg.max_chars}, "
            f"max_new_tokens={cfg.max_new_tokens}); nothing written to {out}"
        )
    meta = {**provenance("synthesize", p, inputs, card), "pre_query_template": template}
    write_table(out, kept, INSTRUCTION_SCHEMA, meta)
    texts = kept["instruction"].to_list()
    mean_words = length_stats(texts)["mean_words"]
    write_json(metrics, {**counts, "distinct_2": distinct_n(texts, 2), "mean_words": mean_words})
    write_cost(cost, [meter])
    typer.echo(f"synthesize: {counts['raw']} raw -> {counts['kept']} kept -> {out}")


if __name__ == "__main__":
    typer.run(main)
