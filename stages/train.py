"""Stage `train` (METHOD A5; parts B–C losses): DPO/SPA/DRO on TRL's DPOTrainer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.io import atomic_dir, sha256_file, write_json
from icon2.core.provenance import provenance
from icon2.core.tables import read_pairs
from icon2.stage import load_model, open_stage, user_errors
from icon2.train.data import check_tokenizer, to_datasets
from icon2.train.distributed import (
    cli_options,
    full_state_dict,
    is_main_process,
    relaunch,
)
from icon2.train.report import headline
from icon2.train.run import save_checkpoint, train


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
    # With train.accelerate_config set, this process only runs `accelerate launch` on itself.
    relaunch(tp.accelerate_config, tp.precision, Path(__file__), options)
    train_ds, eval_ds = to_datasets(read_pairs(pairs), where=str(pairs))
    main_process = is_main_process()  # joins the process group (and picks this rank's GPU)
    policy, tokenizer, card = load_model(model_dir, p)
    check_tokenizer(tokenizer, policy, model_dir)
    # Precomputed reference log-probs come from the starting policy before training, so DPO
    # and DRO need no second model in memory; SPA mixes reference logits in every step.
    drop_ref = tp.precompute_ref_log_probs and tp.loss != "spa"
    ref = None if drop_ref else load_model(model_dir, p)[0]
    result = train(
        tp,
        policy=policy,
        ref=ref,
        tokenizer=tokenizer,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        seed=p.base.seed,
        live=live,
    )
    weights = full_state_dict(result.trainer)  # a collective: every rank takes part
    if not main_process:
        return  # only the main process writes outputs
    meta = provenance("train", p, {"pairs": pairs, "model": model_dir}, card)
    with atomic_dir(out) as tmp:
        extra = {"pairs_sha256": sha256_file(pairs), "provenance": meta}
        name = f"{card['name']}+{tp.loss}"
        save_checkpoint(tmp, policy, tokenizer, parent=card, name=name, extra=extra, state=weights)
    write_json(
        metrics,
        {
            "train_pairs": len(train_ds),
            "validation_pairs": 0 if eval_ds is None else len(eval_ds),
            "optimizer_steps": result.steps,
            "train_seconds": round(result.seconds, 2),
            **headline(result.history),
            **result.dro_summary,
        },
    )
    typer.echo(f"train ({tp.loss}): {len(train_ds)} pairs, {result.steps} steps -> {out}")


if __name__ == "__main__":
    typer.run(main)
