"""Stage `spa@t` (METHOD part B): sample two answers, self-annotate, train π_t."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from icon2.chat import end_of_turn_ids, render_prompt
from icon2.errors import InputError, ParamsError
from icon2.evaluation import load_prompts
from icon2.generation import HFBackend, Sampling
from icon2.io import atomic_dir, write_json, write_table
from icon2.models import MODEL_CARD, load_local, weights_hash
from icon2.params import load_params
from icon2.preference_data import to_datasets
from icon2.self_annotation import order_pairs
from icon2.stage import provenance, seed_everything, user_errors
from icon2.train_report import step_rows
from icon2.training import make_trainer

MSG = pl.List(pl.Struct({"role": pl.String(), "content": pl.String()}))
SCHEMA = {
    "split": pl.String(),
    "prompt": MSG,
    "chosen": MSG,
    "rejected": MSG,
    "reward_chosen": pl.Float64(),
    "reward_rejected": pl.Float64(),
}


@user_errors
def main(
    iteration: Annotated[str, typer.Option(help="Key under spa.iterations.")],
    init_dir: Annotated[Path, typer.Option(help="π_init: the model stage's output.")],
    previous: Annotated[Path, typer.Option(help="π_{t−1} checkpoint.")],
    prompts: Annotated[Path, typer.Option(help="Prompt file (train split used if any).")],
    out: Annotated[Path, typer.Option(help="Directory for this iteration's outputs.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = load_params(params)
    cfg = p.spa
    if iteration not in cfg.iterations:
        raise ParamsError(f"spa.iterations has no iteration {iteration!r}")
    lam = cfg.iterations[iteration].lam
    seed = p.base.seed + int(iteration)
    seed_everything(seed)
    texts = _slice(prompts, int(iteration), cfg.prompts_per_iteration)
    policy, tok, card = load_local(previous, dtype=p.base.dtype, device=p.base.device)
    init, _, init_card = load_local(init_dir, dtype=p.base.dtype, device=p.base.device)
    backend = HFBackend(policy, tok, stop_ids=end_of_turn_ids(tok), batch_size=cfg.batch_size)
    sampling = Sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed)
    gens = backend.generate(
        [render_prompt(tok, x, p.base.system_prompt) for x in texts] * 2,
        sampling,
        desc=f"spa@{iteration} sample",
    )
    n = len(texts)
    # METHOD part B samples up to a token budget and compares what comes out: unlike the
    # steered pairs (A4), a truncated response is kept; only empty or identical pairs go.
    keep = [
        i
        for i in range(n)
        if gens[i].text.strip()
        and gens[n + i].text.strip()
        and gens[i].text.strip() != gens[n + i].text.strip()
    ]
    if not keep:
        raise InputError(
            f"spa@{iteration}: all {n} response pairs were empty or identical; "
            f"raise spa.temperature or spa.max_new_tokens"
        )
    ended = (
        [gens[i].finish_reason == "stop" for i in keep],
        [gens[n + i].finish_reason == "stop" for i in keep],
    )
    xs = [texts[i] for i in keep]
    y1 = [gens[i].text.strip() for i in keep]
    y2 = [gens[n + i].text.strip() for i in keep]
    first_wins, r1, r2 = order_pairs(
        policy, init, tok, xs, y1, y2, beta=cfg.beta, length_penalty=cfg.length_penalty
    )
    head = (
        []
        if p.base.system_prompt is None
        else [{"role": "system", "content": p.base.system_prompt}]
    )
    rows = []
    for j, x in enumerate(xs):
        w, lo = (y1[j], y2[j]) if first_wins[j] else (y2[j], y1[j])
        rw, rl = (r1[j], r2[j]) if first_wins[j] else (r2[j], r1[j])
        rows.append(
            {
                "split": "train",
                "prompt": [*head, {"role": "user", "content": x}],
                "chosen": [{"role": "assistant", "content": w}],
                "rejected": [{"role": "assistant", "content": lo}],
                "reward_chosen": float(rw),
                "reward_rejected": float(rl),
            }
        )
    table = pl.DataFrame(rows, schema=SCHEMA)
    del init
    tp = p.train.model_copy(
        update={"loss": cfg.loss, "spa": p.train.spa.model_copy(update={"lam": lam})}
    )
    ref, _, _ = load_local(previous, dtype=p.base.dtype, device=p.base.device)
    policy.train()
    train_ds, _ = to_datasets(table)
    with tempfile.TemporaryDirectory(prefix="icon2-spa-") as scratch:
        trainer = make_trainer(
            tp,
            model=policy,
            ref_model=ref,
            tokenizer=tok,
            train_dataset=train_ds,
            eval_dataset=None,
            output_dir=Path(scratch),
            seed=seed,
        )
        trainer.train()
    meta = provenance("spa", p, ["spa", "train"], {"previous": previous, "init": init_dir}, card)
    meta.update(iteration=int(iteration), lam=lam, init_weights_sha256=init_card["weights_sha256"])
    with atomic_dir(out) as tmp:
        write_table(tmp / "pairs.parquet", table, SCHEMA, meta)
        policy.save_pretrained(tmp / "model", safe_serialization=True)
        tok.save_pretrained(tmp / "model")
        child = {
            **{k: card[k] for k in ("num_layers", "hidden_size", "dtype", "revision")},
            "name": f"{init_card['name']}+spa{iteration}",
            "kind": "trained",
            "parent": card["name"],
            "parent_weights_sha256": card["weights_sha256"],
            "weights_sha256": weights_hash(tmp / "model"),
            "provenance": meta,
        }
        (tmp / "model" / MODEL_CARD).write_text(json.dumps(child, indent=2, sort_keys=True))
        steps = step_rows(trainer.state.log_history)
        write_json(
            tmp / "metrics.json",
            {
                "iteration": int(iteration),
                "lam": lam,
                "prompts": n,
                "pairs": table.height,
                "truncated_responses": sum(not e for side in ended for e in side),
                "dropped": n - table.height,
                "first_preferred": int(first_wins.sum()),
                "mean_reward_gap": float(
                    (table["reward_chosen"] - table["reward_rejected"]).to_numpy().mean()
                ),
                "optimizer_steps": int(trainer.state.global_step),
                "steps": steps,
            },
        )
    typer.echo(f"spa@{iteration}: {n} prompts -> {table.height} self-annotated pairs -> {out}")


def _slice(path: Path, iteration: int, size: int) -> list[str]:
    """The iteration-th disjoint slice of the prompts (the train split of a filter table)."""
    if path.suffix == ".parquet" and path.is_file():
        frame = pl.read_parquet(path)
        if "split" in frame.columns:
            frame = frame.filter(pl.col("split") == "train")
        texts = (
            [str(t) for t in frame["instruction"].to_list()]
            if "instruction" in frame.columns
            else load_prompts(path, None)[0]
        )
    else:
        texts = load_prompts(path, None)[0]
    chunk = texts[(iteration - 1) * size : iteration * size]
    if not chunk:
        raise InputError(
            f"{path}: no prompts left for spa iteration {iteration} "
            f"({len(texts)} prompts, {size} per iteration)"
        )
    return chunk


if __name__ == "__main__":
    typer.run(main)
