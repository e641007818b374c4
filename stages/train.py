"""Stage `train` (METHOD A5; parts B–C losses): DPO/SPA/DRO on TRL's DPOTrainer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.io import sha256_file, write_json
from icon2.core.processes import process_state
from icon2.core.provenance import provenance
from icon2.core.tables import read_pairs
from icon2.stage import load_model, open_stage, user_errors
from icon2.train.data import check_tokenizer, to_datasets
from icon2.train.distributed import cli_options, relaunch
from icon2.train.run import (
    POLICY_DTYPE,
    needs_reference,
    run_record,
    train_and_gather,
    train_metrics,
)


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Starting model (policy and reference).")],
    pairs: Annotated[Path, typer.Option(help="Preference table (prompt/chosen/rejected).")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    live: Annotated[Path, typer.Option(help="Directory for the live per-step curves.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    options = cli_options(locals())  # this command's own options, to relaunch it unchanged
    p = open_stage(params)
    tp = p.train
    # Inputs are checked here, before a launch, so that a bad one is one error, not N.
    train_ds, eval_ds = to_datasets(read_pairs(pairs), where=str(pairs))
    # With train.accelerate_config set, this process only runs `accelerate launch` on itself.
    relaunch(tp.accelerate_config, tp.precision, Path(__file__), options)
    process_state()  # joins the process group (and picks this rank's GPU)
    policy, tokenizer, card = load_model(model_dir, p, dtype=POLICY_DTYPE)  # fp32 masters
    check_tokenizer(tokenizer, policy, model_dir)
    ref = load_model(model_dir, p)[0] if needs_reference(tp) else None
    done = train_and_gather(
        tp,
        policy=policy,
        ref=ref,
        tokenizer=tokenizer,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        seed=p.base.seed,
        live=live,
    )
    if done is None:
        return  # only the main process writes outputs
    meta = provenance("train", p, {"pairs": pairs, "model": model_dir}, card)
    run = run_record(done.result)  # how it was spread (and peak GPU memory on CUDA)
    extra = {"pairs_sha256": sha256_file(pairs), "provenance": meta, "run": run}
    done.save(out, parent=card, name=f"{card['name']}+{tp.loss}", extra=extra)
    write_json(metrics, train_metrics(done.result, train_ds, eval_ds))
    typer.echo(f"train ({tp.loss}): {len(train_ds)} pairs, {done.result.steps} steps -> {out}")


if __name__ == "__main__":
    typer.run(main)
