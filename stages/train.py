"""Stage `train` (METHOD A5; parts B–C losses): DPO/SPA/DRO on TRL's DPOTrainer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.io import atomic_dir, sha256_file, write_csv, write_json
from icon2.core.provenance import provenance
from icon2.core.tables import read_pairs
from icon2.stage import load_model, open_stage, user_errors
from icon2.train.data import check_tokenizer, to_datasets
from icon2.train.report import headline, steps_frame
from icon2.train.run import save_checkpoint, train


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Starting model (policy and reference).")],
    pairs: Annotated[Path, typer.Option(help="Preference table (prompt/chosen/rejected).")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    plots: Annotated[Path, typer.Option(help="CSV of per-step loss and reward accuracy.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = open_stage(params)
    tp = p.train
    train_ds, eval_ds = to_datasets(read_pairs(pairs), where=str(pairs))
    policy, tokenizer, card = load_model(model_dir, p)
    check_tokenizer(tokenizer, policy, model_dir)
    ref, _, _ = load_model(model_dir, p)
    result = train(
        tp,
        policy=policy,
        ref=ref,
        tokenizer=tokenizer,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        seed=p.base.seed,
    )
    meta = provenance("train", p, {"pairs": pairs, "model": model_dir}, card)
    with atomic_dir(out) as tmp:
        extra = {"pairs_sha256": sha256_file(pairs), "provenance": meta}
        save_checkpoint(
            tmp, policy, tokenizer, parent=card, name=f"{card['name']}+{tp.loss}", extra=extra
        )
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
    write_csv(plots, steps_frame(result.history))
    typer.echo(f"train ({tp.loss}): {len(train_ds)} pairs, {result.steps} steps -> {out}")


if __name__ == "__main__":
    typer.run(main)
