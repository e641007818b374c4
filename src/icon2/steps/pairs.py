"""A4: one chosen (+γ⁺) and one rejected (γ⁻) generation per kept instruction.

Both generations use identical decoding settings; the only difference is the sign and size
of the push along the instruction's own criterion direction in the controlled layers.
No extra candidates are sampled and no judge is asked.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.cost import Meter
from icon2.core.errors import InputError
from icon2.core.params import Params
from icon2.core.tables import PAIR_SCHEMA
from icon2.engines import open_backend
from icon2.engines.base import Backend, Generation, Sampling
from icon2.engines.metered import MeteredBackend, engine_devices, stage_meter
from icon2.model.chat import render_prompt, system_turn
from icon2.steps.direction_file import DirectionFile, GammaScale, steering_groups
from icon2.steps.drops import DROP_REASONS, pair_drop_reason
from icon2.steps.shards import Shard, ShardStore, plan_shards, run_shards, shard_sampling


def generate_pairs(
    backend: Backend,
    tokenizer: PreTrainedTokenizerBase,
    kept: pl.DataFrame,
    dfile: DirectionFile,
    *,
    gamma_pos: float,
    gamma_neg: float,
    layers: list[int],
    scale: GammaScale,
    sampling: Sampling,
    system: str | None = None,
    shard_size: int | None = None,
    store: ShardStore | None = None,
    meter: Meter | None = None,
) -> tuple[pl.DataFrame, dict[str, int]] | None:
    """Steer, generate, and drop pairs that carry no signal.

    Args:
        kept: the filter stage's table; uses columns id, instruction, criterion, split.
        system: system turn for both generations (also put at the head of ``prompt``).
        shard_size: instructions per shard (:mod:`icon2.steps.shards`); None = one shard.
            The engine gets one vector per (criterion, γ) group, not per row.
        store: where finished shards are kept, to resume a killed run; None = nowhere.
        meter: the meter ``backend`` adds to (its shares are kept with the shards).

    Returns:
        (pairs with ``PAIR_SCHEMA`` — prompt/chosen/rejected as chat-message lists, TRL's
        conversational preference format — and counts: instructions, each drop reason,
        pairs); None on a process other than the main one (:func:`run_shards`).
    """
    rows = kept.to_dicts()
    prompts = [render_prompt(tokenizer, r["instruction"], system) for r in rows]
    head = system_turn(system)
    criteria = [r["criterion"] for r in rows]
    n = len(rows)

    def work(shard: Shard) -> list[Generation]:
        # Chosen and rejected rows go through one batched call: each row's steering group
        # (criterion, γ) carries the sign, so each instruction's two passes differ only in γ.
        part, m = slice(shard.start, shard.stop), shard.rows
        steering = steering_groups(
            dfile, criteria[part] * 2, [gamma_pos] * m + [gamma_neg] * m, layers, scale
        )
        shard_sampled = shard_sampling(sampling, shard)
        return backend.generate(prompts[part] * 2, shard_sampled, vectors=steering, desc="pairs")

    shards = plan_shards(n, shard_size or max(n, 1))
    results = run_shards(shards, work, store=store, meter=meter, per_row=2, desc="pairs")
    if results is None:
        return None
    chosen: list[Generation] = []
    rejected: list[Generation] = []
    for shard, gens in zip(shards, results, strict=True):
        chosen += gens[: shard.rows]
        rejected += gens[shard.rows :]
    counts = dict.fromkeys(DROP_REASONS, 0)
    out = []
    for r, c, rj in zip(rows, chosen, rejected, strict=True):
        reason = pair_drop_reason(c, rj)
        if reason:
            counts[reason] += 1
            continue
        out.append(
            {
                "id": r["id"],
                "split": r["split"],
                "criterion": r["criterion"],
                "prompt": [*head, {"role": "user", "content": r["instruction"]}],
                "chosen": [{"role": "assistant", "content": c.text.strip()}],
                "rejected": [{"role": "assistant", "content": rj.text.strip()}],
                "gamma_pos": gamma_pos,
                "gamma_neg": gamma_neg,
                "gamma_scale": scale,
                "layers": layers,
                "chosen_tokens": c.token_count,
                "rejected_tokens": rj.token_count,
                "chosen_finish": c.finish_reason,
                "rejected_finish": rj.finish_reason,
            }
        )
    counts["instructions"] = n
    counts["pairs"] = len(out)
    if not out:
        raise InputError(
            f"pairs: all {n} pairs were dropped (empty: {counts['empty']}, truncated: "
            f"{counts['truncated']}, identical: {counts['identical']}); raise "
            f"pairs.max_new_tokens or the size of the push (pairs.gamma_pos/gamma_neg)"
        )
    table = pl.DataFrame(out, schema=PAIR_SCHEMA)
    counts["train"] = table.filter(pl.col("split") == "train").height
    counts["validation"] = table.height - counts["train"]
    return table, counts


def steer_pairs(
    p: Params,
    model_dir: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    kept: pl.DataFrame,
    dfile: DirectionFile,
    layers: list[int],
    store: ShardStore | None = None,
) -> tuple[pl.DataFrame, dict[str, int], Meter] | None:
    """The ``pairs`` stage's work: :func:`generate_pairs` with the ``pairs`` section's γ,
    decoding settings and shard size, on the engine ``base.engine`` names, metered as
    ICON²'s response generation (cost, A8); finished shards go to ``store``.

    Returns:
        (pairs with ``PAIR_SCHEMA``, counts, the meter); None on a process other than the
        main one.
    """
    cfg = p.pairs
    sampling = Sampling(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        repetition_penalty=cfg.repetition_penalty,
        seed=p.base.seed,
    )
    meter = stage_meter("pairs", "icon2", "response generation", p.base.device, engine_devices(p))
    engine = open_backend(p, model_dir, model, tokenizer, batch_size=cfg.batch_size, steering=True)
    with engine as backend:
        made = generate_pairs(
            MeteredBackend(backend, meter, tokenizer),
            tokenizer,
            kept,
            dfile,
            gamma_pos=cfg.gamma_pos,
            gamma_neg=cfg.gamma_neg,
            layers=layers,
            scale=cfg.gamma_scale,
            sampling=sampling,
            system=p.base.system_prompt,
            shard_size=cfg.shard_size,
            store=store,
            meter=meter,
        )
    return None if made is None else (*made, meter)
