"""Stage `train` (METHOD A5; parts B–C losses): DPO/SPA/DRO on TRL's DPOTrainer."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from icon2.errors import ModelError
from icon2.io import atomic_dir, sha256_file, write_csv, write_json
from icon2.models import MODEL_CARD, load_local, weights_hash
from icon2.params import load_params
from icon2.preference_data import read_pairs, to_datasets
from icon2.stage import provenance, seed_everything, user_errors
from icon2.train_report import final_eval, step_rows
from icon2.training import make_trainer


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Starting model (policy and reference).")],
    pairs: Annotated[Path, typer.Option(help="Preference table (prompt/chosen/rejected).")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    plots: Annotated[Path, typer.Option(help="CSV of per-step reward accuracy.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = load_params(params)
    tp = p.train
    seed_everything(p.base.seed)
    table = read_pairs(pairs)
    train_ds, eval_ds = to_datasets(table)
    policy, tokenizer, card = load_local(model_dir, dtype=p.base.dtype, device=p.base.device)
    ref, _, _ = load_local(model_dir, dtype=p.base.dtype, device=p.base.device)
    _check_tokenizer(tokenizer, policy, model_dir)
    policy.train()
    with tempfile.TemporaryDirectory(prefix="icon2-train-") as scratch:
        trainer = make_trainer(
            tp,
            model=policy,
            ref_model=ref,
            tokenizer=tokenizer,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            output_dir=Path(scratch),
            seed=p.base.seed,
        )
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    history = trainer.state.log_history
    steps = step_rows(history)
    with atomic_dir(out) as tmp:
        policy.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        meta = provenance("train", p, ["train"], {"pairs": pairs, "model": model_dir}, card)
        child = {
            **{k: card[k] for k in ("num_layers", "hidden_size", "dtype", "revision")},
            "name": f"{card['name']}+{tp.loss}",
            "kind": "trained",
            "parent": card["name"],
            "parent_weights_sha256": card["weights_sha256"],
            "pairs_sha256": sha256_file(pairs),
            "weights_sha256": weights_hash(tmp),
            "provenance": meta,
        }
        (tmp / MODEL_CARD).write_text(json.dumps(child, indent=2, sort_keys=True) + "\n")
    final_train = steps[-1] if steps else {}
    write_json(
        metrics,
        {
            "loss": tp.loss,
            "train_pairs": len(train_ds),
            "validation_pairs": 0 if eval_ds is None else len(eval_ds),
            "optimizer_steps": int(trainer.state.global_step),
            "train_seconds": round(seconds, 2),
            "final_train": final_train,
            "eval": final_eval(history),
            "dro_solve_seconds": round(float(getattr(trainer, "dro_solve_seconds", 0.0)), 4),
            "steps": steps,
        },
    )
    write_csv(
        plots,
        pl.DataFrame(
            [
                {"step": r["step"], "reward_accuracy": r.get("reward_accuracy", float("nan"))}
                for r in steps
            ],
            schema={"step": pl.Float64, "reward_accuracy": pl.Float64},
        ),
    )
    typer.echo(
        f"train ({tp.loss}): {len(train_ds)} pairs, {trainer.state.global_step} steps "
        f"in {seconds:.1f}s -> {out}"
    )


def _check_tokenizer(tokenizer: object, model: object, model_dir: Path) -> None:
    vocab = int(model.config.vocab_size)  # type: ignore[attr-defined]
    size = len(tokenizer)  # type: ignore[arg-type]
    if size > vocab:
        raise ModelError(
            f"{model_dir}: the tokenizer has {size} tokens but the model's embedding has "
            f"{vocab}; they do not belong together"
        )


if __name__ == "__main__":
    typer.run(main)
