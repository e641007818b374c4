"""Stage `spa@t` (METHOD part B): sample two answers, self-annotate, train π_t."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.io import write_json
from icon2.core.params import load_params, spa_train_params
from icon2.core.processes import process_state
from icon2.core.prompts import read_prompts
from icon2.core.provenance import provenance
from icon2.core.tables import SPA_PAIR_SCHEMA, write_table
from icon2.stage import load_model, open_stage, user_errors
from icon2.steps.self_annotation import annotate_iteration, check_previous, prompt_slice
from icon2.train.data import to_datasets
from icon2.train.distributed import cli_options, relaunch
from icon2.train.run import (
    POLICY_DTYPE,
    curve_metrics,
    needs_reference,
    run_record,
    train_and_gather,
)


@user_errors
def main(
    iteration: Annotated[str, typer.Option(help="Key under spa.iterations.")],
    init_dir: Annotated[Path, typer.Option(help="π_init: the model stage's output.")],
    previous: Annotated[Path, typer.Option(help="π_{t−1} checkpoint.")],
    prompts: Annotated[Path, typer.Option(help="Prompt file (train split used if any).")],
    out: Annotated[Path, typer.Option(help="Directory for this iteration's outputs.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    options = cli_options(locals())  # this command's own options, to relaunch it unchanged
    seed = load_params(params).base.seed + int(iteration)
    p = open_stage(params, seed=seed)
    tp = spa_train_params(p, iteration)
    # Inputs are checked here, before a launch, so that a bad one is one error, not N.
    check_previous(previous, iteration)
    texts, _ = read_prompts(prompts, split="train")
    texts = prompt_slice(texts, int(iteration), p.spa.prompts_per_iteration, str(prompts))
    # With train.accelerate_config set, this process only runs `accelerate launch` on itself.
    relaunch(p.train.accelerate_config, tp.precision, Path(__file__), options)
    process_state()  # joins the process group (and picks this rank's GPU)
    policy, tok, card = load_model(previous, p, dtype=POLICY_DTYPE)  # fp32 masters
    init, _, init_card = load_model(init_dir, p)
    # Each process samples and labels its share of the prompts; all of them train on all pairs.
    annotation = annotate_iteration(p, iteration, previous, policy, init, tok, texts, seed=seed)
    del init
    ref = load_model(previous, p)[0] if needs_reference(tp) else None
    train_ds, _ = to_datasets(annotation.table, where=f"spa@{iteration} pairs")
    done = train_and_gather(
        tp,
        policy=policy,
        ref=ref,
        tokenizer=tok,
        train_dataset=train_ds,
        seed=seed,
        live=out / "live",
    )
    if done is None:
        return  # only the main process writes outputs
    meta = provenance("spa", p, {"previous": previous, "init": init_dir}, card, iteration=iteration)
    meta.update(
        iteration=int(iteration), lam=tp.spa.lam, init_weights_sha256=init_card["weights_sha256"]
    )
    write_table(out / "pairs.parquet", annotation.table, SPA_PAIR_SCHEMA, meta)
    name = f"{init_card['name']}+spa{iteration}"
    extra = {"provenance": meta, "run": run_record(done.result)}
    done.save(out / "model", parent=card, name=name, extra=extra)
    trained = {"truncated_trained_without_eot": done.result.trainer.truncated_answers}
    write_json(
        out / "metrics.json", {**annotation.headline(), **trained, **curve_metrics(done.result)}
    )
    typer.echo(f"spa@{iteration}: {len(texts)} prompts -> {annotation.table.height} pairs -> {out}")


if __name__ == "__main__":
    typer.run(main)
