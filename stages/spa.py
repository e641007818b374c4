"""Stage `spa@t` (METHOD part B): sample two answers, self-annotate, train π_t."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.errors import ParamsError
from icon2.core.io import atomic_dir, write_json
from icon2.core.params import load_params, spa_train_params
from icon2.core.provenance import provenance
from icon2.core.tables import SPA_PAIR_SCHEMA, read_prompts, write_table
from icon2.engines import make_backend
from icon2.engines.base import Sampling
from icon2.stage import load_model, open_stage, user_errors
from icon2.steps.self_annotation import merge_annotations, prompt_slice, self_annotate
from icon2.train.data import to_datasets
from icon2.train.distributed import all_ranks, cli_options, full_state_dict, process_state, relaunch
from icon2.train.report import headline
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
    options = cli_options(locals())  # this command's own options, to relaunch it unchanged
    seed = load_params(params).base.seed + int(iteration)
    p = open_stage(params, seed=seed)
    cfg, tp = p.spa, spa_train_params(p, iteration)
    # With train.accelerate_config set, this process only runs `accelerate launch` on itself.
    relaunch(p.train.accelerate_config, tp.precision, Path(__file__), options)
    # Each process samples and labels its share of the prompts; all of them train on all pairs.
    rank = process_state()
    if not previous.is_dir():
        raise ParamsError(
            f"spa.iterations.{iteration}.previous: {previous} does not exist; run the stage "
            f"that writes it first (`dvc repro` runs them in order)"
        )
    texts, _ = read_prompts(prompts, split="train")
    texts = prompt_slice(texts, int(iteration), cfg.prompts_per_iteration, str(prompts))
    policy, tok, card = load_model(previous, p)
    init, _, init_card = load_model(init_dir, p)
    sampling = Sampling(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        seed=seed + rank.process_index,
    )
    annotation = self_annotate(
        make_backend(p, previous, policy, tok, batch_size=cfg.batch_size),
        policy,
        init,
        tok,
        texts[rank.process_index :: rank.num_processes],
        sampling=sampling,
        system=p.base.system_prompt,
        beta=cfg.beta,
        length_penalty=cfg.length_penalty,
        label=f"spa@{iteration}",
    )
    annotation = merge_annotations(all_ranks(annotation))
    del init
    # As in the train stage: precomputed reference log-probs need no second model.
    drop_ref = tp.precompute_ref_log_probs and tp.loss != "spa"
    ref = None if drop_ref else load_model(previous, p)[0]
    train_ds, _ = to_datasets(annotation.table, where=f"spa@{iteration} pairs")
    result = train(
        tp,
        policy=policy,
        ref=ref,
        tokenizer=tok,
        train_dataset=train_ds,
        seed=seed,
        live=out / "live",
    )
    weights = full_state_dict(result.trainer)  # a collective: every rank takes part
    if not rank.is_main_process:
        return  # only the main process writes outputs
    meta = provenance("spa", p, {"previous": previous, "init": init_dir}, card, iteration=iteration)
    meta.update(
        iteration=int(iteration), lam=tp.spa.lam, init_weights_sha256=init_card["weights_sha256"]
    )
    write_table(out / "pairs.parquet", annotation.table, SPA_PAIR_SCHEMA, meta)
    with atomic_dir(out / "model") as tmp:
        name = f"{init_card['name']}+spa{iteration}"
        extra = {"provenance": meta}
        save_checkpoint(tmp, policy, tok, parent=card, name=name, extra=extra, state=weights)
    keep = ("pairs", "truncated_responses", "tied_rewards", "mean_reward_gap")
    counts = {k: annotation.counts[k] for k in keep}
    write_json(out / "metrics.json", {**counts, **headline(result.history), **result.dro_summary})
    typer.echo(f"spa@{iteration}: {len(texts)} prompts -> {annotation.table.height} pairs -> {out}")


if __name__ == "__main__":
    typer.run(main)
