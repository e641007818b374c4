"""Stage `spa@t` (METHOD part B): sample two answers, self-annotate, train π_t."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.errors import ParamsError
from icon2.core.io import atomic_dir, write_csv, write_json
from icon2.core.provenance import provenance
from icon2.core.tables import SPA_PAIR_SCHEMA, read_prompts, write_table
from icon2.engines.base import Sampling
from icon2.engines.hf import chat_backend
from icon2.stage import load_model, open_stage, user_errors
from icon2.steps.self_annotation import prompt_slice, self_annotate
from icon2.train.data import to_datasets
from icon2.train.report import headline, steps_frame
from icon2.train.run import save_checkpoint, train


@user_errors
def main(
    iteration: Annotated[str, typer.Option(help="Key under spa.iterations.")],
    init_dir: Annotated[Path, typer.Option(help="π_init: the model stage's output.")],
    previous: Annotated[Path, typer.Option(help="π_{t−1} checkpoint.")],
    prompts: Annotated[Path, typer.Option(help="Prompt file (train split used if any).")],
    out: Annotated[Path, typer.Option(help="Directory for this iteration's outputs.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = open_stage(params)
    cfg = p.spa
    if iteration not in cfg.iterations:
        raise ParamsError(
            f"spa.iterations: no iteration {iteration!r} (have {list(cfg.iterations)})"
        )
    seed = p.base.seed + int(iteration)
    p = open_stage(params, seed=seed)
    texts, _ = read_prompts(prompts, split="train")
    texts = prompt_slice(texts, int(iteration), cfg.prompts_per_iteration, str(prompts))
    policy, tok, card = load_model(previous, p)
    init, _, init_card = load_model(init_dir, p)
    sampling = Sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed)
    annotation = self_annotate(
        chat_backend(policy, tok, batch_size=cfg.batch_size),
        policy,
        init,
        tok,
        texts,
        sampling=sampling,
        system=p.base.system_prompt,
        beta=cfg.beta,
        length_penalty=cfg.length_penalty,
        label=f"spa@{iteration}",
    )
    del init
    lam = cfg.iterations[iteration].lam
    tp = p.train.model_copy(
        update={"loss": cfg.loss, "spa": p.train.spa.model_copy(update={"lam": lam})}
    )
    ref, _, _ = load_model(previous, p)
    train_ds, _ = to_datasets(annotation.table, where=f"spa@{iteration} pairs")
    result = train(
        tp,
        policy=policy,
        ref=ref,
        tokenizer=tok,
        train_dataset=train_ds,
        eval_dataset=None,
        seed=seed,
    )
    meta = provenance("spa", p, {"previous": previous, "init": init_dir}, card, iteration=iteration)
    meta.update(iteration=int(iteration), lam=lam, init_weights_sha256=init_card["weights_sha256"])
    write_table(out / "pairs.parquet", annotation.table, SPA_PAIR_SCHEMA, meta)
    with atomic_dir(out / "model") as tmp:
        name = f"{init_card['name']}+spa{iteration}"
        save_checkpoint(tmp, policy, tok, parent=card, name=name, extra={"provenance": meta})
    keep = ("pairs", "truncated_responses", "tied_rewards", "mean_reward_gap")
    counts = {k: annotation.counts[k] for k in keep}
    write_json(
        out / "metrics.json",
        {
            **counts,
            "optimizer_steps": result.steps,
            **headline(result.history),
            **result.dro_summary,
        },
    )
    write_csv(out / "steps.csv", steps_frame(result.history))
    typer.echo(f"spa@{iteration}: {len(texts)} prompts -> {annotation.table.height} pairs -> {out}")


if __name__ == "__main__":
    typer.run(main)
