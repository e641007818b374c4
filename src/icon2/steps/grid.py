"""A6: answers and rewards for every cell of the γ⁺ × γ⁻ × layer-range grid (appendix J).

With the same decoding settings, a chosen answer depends only on (range, γ⁺) and a
rejected answer only on (range, γ⁻), so each instruction needs |ranges| × (|γ⁺| + |γ⁻|)
generations, not two per cell: the 6 × 6 × 3 paper grid costs 36 generations per
instruction instead of 216. Every answer is scored once (criterion ``reward`` only: the
judge-free criterion needs no scorer); a cell's pairs are then formed by combining its
chosen and rejected answers per instruction and go through A4's drop rule. The answers of
the pairs A4 keeps are re-read unsteered once each for their projections
(:mod:`icon2.steps.projection`), whichever the criterion, so every grid reports the gap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.cost import Meter
from icon2.core.layers import middle_third, resolve_layers
from icon2.core.params import Params
from icon2.engines import open_backend
from icon2.engines.base import Backend, Sampling
from icon2.engines.metered import engine_devices, stage_meter
from icon2.model.chat import render_prompt
from icon2.steps.direction_file import (
    DirectionFile,
    GammaScale,
    controlled_layers,
    steering_groups,
)
from icon2.steps.drops import pair_drop_reason
from icon2.steps.projection import Projector
from icon2.steps.scorers import Scorer, make_scorer
from icon2.steps.selection import (
    SCORED_SCHEMA,
    Rule,
    Selection,
    grid_table,
    select,
)
from icon2.steps.selection_report import apply_command, per_setting


def subsample(kept: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    """``n`` train-split instructions drawn with ``seed`` (all of them when fewer), in id order."""
    train = kept.filter(pl.col("split") == "train") if "split" in kept.columns else kept
    if train.height > n:
        train = train.sample(n, seed=seed, shuffle=False)
    return train.sort("id")


def grid_scores(
    backend: Backend,
    tokenizer: PreTrainedTokenizerBase,
    rows: pl.DataFrame,
    dfile: DirectionFile,
    *,
    ranges: Mapping[str, list[int]],
    gammas_pos: Sequence[float],
    gammas_neg: Sequence[float],
    scale: GammaScale,
    sampling: Sampling,
    system: str | None,
    scorer: Scorer | None,
    projector: Projector,
    generation: Meter,
    annotation: Meter,
) -> pl.DataFrame:
    """One ``SCORED_SCHEMA`` row per (range, γ⁺, γ⁻, instruction).

    Args:
        rows: id, instruction, criterion of the subsample.
        ranges: name → 1-based controlled layers.
        scorer: rates every answer; None leaves the rewards null.
        projector: projects the answers of the pairs A4 keeps (the others stay null).
    """
    instructions = rows["instruction"].to_list()
    criteria = rows["criterion"].to_list()
    prompts = [render_prompt(tokenizer, x, system) for x in instructions]
    gammas = [*gammas_pos, *gammas_neg]
    n = len(prompts)
    read_before = int(getattr(scorer, "tokens_read", 0)) + projector.tokens_read
    out: list[dict[str, Any]] = []
    for name, layers in ranges.items():
        vectors = steering_groups(
            dfile, criteria * len(gammas), [g for g in gammas for _ in range(n)], layers, scale
        )
        with generation as meter:
            gens = backend.generate(
                prompts * len(gammas), sampling, vectors=vectors, desc=f"grid {name}"
            )
        meter.tokens_generated += sum(g.token_count for g in gens)
        meter.tokens_read += len(gammas) * sum(
            len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts
        )
        texts = [g.text.strip() for g in gens]
        # Answer k = γ index k // n, instruction k % n; pair (a, b, i) = answers a·n+i, b·n+i.
        rewards: list[float | None] = [None] * len(texts)
        if scorer is not None:
            with annotation:
                rewards = [float(x) for x in scorer.score(instructions * len(gammas), texts)]
        cells = [
            (a, b, i, pair_drop_reason(gens[a * n + i], gens[b * n + i]))
            for a in range(len(gammas_pos))
            for b in range(len(gammas_pos), len(gammas))
            for i in range(n)
        ]
        read = sorted({k for a, b, i, why in cells if why is None for k in (a * n + i, b * n + i)})
        proj: dict[int, float] = {}
        if read:
            with annotation:
                values = projector.project(
                    [instructions[k % n] for k in read],
                    [texts[k] for k in read],
                    [criteria[k % n] for k in read],
                )
            proj = dict(zip(read, (float(v) for v in values), strict=True))
        for a, b, i, why in cells:
            c, r = a * n + i, b * n + i
            out.append(
                {
                    "layer_range": name,
                    "layers": layers,
                    "gamma_pos": gammas[a],
                    "gamma_neg": gammas[b],
                    "id": rows["id"][i],
                    "chosen_reward": rewards[c],
                    "rejected_reward": rewards[r],
                    "chosen_projection": None if why else proj[c],
                    "rejected_projection": None if why else proj[r],
                    "drop_reason": why,
                }
            )
    read_after = int(getattr(scorer, "tokens_read", 0)) + projector.tokens_read
    annotation.tokens_read += read_after - read_before
    return pl.DataFrame(out, schema=SCORED_SCHEMA)


def layer_thirds(num_layers: int) -> dict[str, list[int]]:
    """Early / middle / late layer ranges (appendix J): the first third, the paper's middle
    range (:func:`~icon2.core.layers.middle_third`, the ``pairs`` default) and the last third."""
    third = max(num_layers // 3, 1)
    return {
        "early": list(range(1, third + 1)),
        "middle": middle_third(num_layers),
        "late": list(range(max(num_layers - third + 1, 1), num_layers + 1)),
    }


def layer_ranges(
    requested: Mapping[str, list[int]] | None, num_layers: int, dfile: DirectionFile, path: Path
) -> dict[str, list[int]]:
    """The grid's layer ranges: ``select.layer_ranges``, or by default
    :func:`layer_thirds`; every layer must be one of the direction file's (at ``path``).

    Raises:
        ModelError: naming ``select.layer_ranges.<name>`` (see
            :func:`~icon2.core.layers.resolve_layers`).
    """
    return {
        name: resolve_layers(
            layers,
            num_layers,
            f"select.layer_ranges.{name}",
            within=dfile.layers,
            source=str(path),
        )
        for name, layers in (requested or layer_thirds(num_layers)).items()
    }


def projection_layers(
    requested: Sequence[int] | None, num_layers: int, dfile: DirectionFile, path: Path
) -> list[int]:
    """Where the projection gap is read: ``select.projection_layers``, or by default the
    middle third (the default controlled layers); each a layer of the file at ``path``."""
    return controlled_layers(dfile, requested, num_layers, path, key="select.projection_layers")


@dataclass(frozen=True)
class GridRun:
    """The ``selection`` stage's results."""

    scored: pl.DataFrame  # one ``SCORED_SCHEMA`` row per generated pair
    cells: pl.DataFrame  # one ``GRID_SCHEMA`` row per grid cell
    pick: Selection | None
    reason: str  # what was picked and why, or why nothing could be
    rule: Rule
    scorer: str | None  # the scorer's name; None when none ran (criterion projection_gap)
    projection_layers: list[int]  # where the projection gap was read
    instructions: int  # the subsample's size
    meters: list[Meter]  # response generation, preference annotation (cost, A8)

    def summary(self) -> dict[str, Any]:
        """The criterion, the chosen setting and every setting's values (``selected.json``)."""
        return {
            "criterion": self.rule.criterion,
            "selected": None if self.pick is None else self.pick.to_json(),
            "reason": self.reason,
            "apply": apply_command(self.pick),
            "min_share": self.rule.min_share,
            "min_kept_fraction": self.rule.min_kept_fraction,
            "scorer": self.scorer,
            "projection_layers": self.projection_layers,
            "instructions": self.instructions,
            "cells": self.cells.height,
            "settings": per_setting(self.cells),
        }


def run_grid(
    p: Params,
    model_dir: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_name: str,
    dfile: DirectionFile,
    kept: pl.DataFrame,
    ranges: Mapping[str, list[int]],
    read_layers: Sequence[int],
) -> GridRun:
    """A6 with the ``select`` section: score the γ⁺ × γ⁻ × ``ranges`` grid on a seeded
    subsample of ``kept`` (the filter stage's table) and apply ``select.criterion``'s rule.

    Generation uses the ``pairs`` decoding settings (``select.max_new_tokens`` if set) on
    the engine ``base.engine`` names. Under criterion ``reward`` answers are scored by the
    ``baselines`` section's reward model or judge (default: the starting model rating its
    own answers). Either way the kept pairs' answers are projected at ``read_layers``
    (:func:`projection_layers`) by the unsteered ``model``, ``pairs.batch_size`` at a time.
    """
    cfg, pc = p.select, p.pairs
    rows = subsample(kept, cfg.instructions, p.base.seed if cfg.seed is None else cfg.seed)
    # Its own method in the cost table: tuning work, outside the ICON² / baseline ratio.
    method, device = "icon2 selection", p.base.device
    generation = stage_meter("selection", method, "response generation", device, engine_devices(p))
    annotation = stage_meter("selection", method, "preference annotation", device)
    rule = Rule(cfg.criterion, cfg.min_share, cfg.min_kept_fraction)
    scorer = None
    if rule.criterion == "reward":
        scorer = make_scorer(
            p.baselines.reward_model,
            p.baselines.judge,
            (model, tokenizer, model_name),
            dtype=p.base.dtype,
            batch_size=p.baselines.batch_size,
        )
    projector = Projector(
        model,
        tokenizer,
        dfile,
        layers=read_layers,
        system=p.base.system_prompt,
        batch_size=pc.batch_size,
    )
    # Projections and the scorer read with the HF model between generations: with vLLM
    # the engine stops after each call and the model comes back to the GPU.
    engine = open_backend(
        p, model_dir, model, tokenizer, batch_size=pc.batch_size, steering=True,
        close_between_calls=True,
    )  # fmt: skip
    with engine as backend:
        scored = grid_scores(
            backend,
            tokenizer,
            rows,
            dfile,
            ranges=ranges,
            gammas_pos=cfg.gamma_pos,
            gammas_neg=cfg.gamma_neg,
            scale=pc.gamma_scale,
            sampling=Sampling(
                max_new_tokens=cfg.max_new_tokens or pc.max_new_tokens,
                temperature=pc.temperature,
                top_p=pc.top_p,
                repetition_penalty=pc.repetition_penalty,
                seed=p.base.seed,
            ),
            system=p.base.system_prompt,
            scorer=scorer,
            projector=projector,
            generation=generation,
            annotation=annotation,
        )
    cells = grid_table(scored, rule)
    pick, reason = select(cells, rule)
    return GridRun(
        scored,
        cells,
        pick,
        reason,
        rule,
        None if scorer is None else scorer.name,
        list(read_layers),
        rows.height,
        [generation, annotation],
    )
