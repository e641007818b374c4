"""A6: answers and rewards for every cell of the γ⁺ × γ⁻ × layer-range grid (appendix J).

With the same decoding settings, a chosen answer depends only on (range, γ⁺) and a
rejected answer only on (range, γ⁻), so each instruction needs |ranges| × (|γ⁺| + |γ⁻|)
generations, not two per cell: the 6 × 6 × 3 paper grid costs 36 generations per
instruction instead of 216. Every answer is scored once; a cell's pairs are then formed by
combining its chosen and rejected answers per instruction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.layers import middle_third, resolve_layers
from icon2.core.params import Params
from icon2.engines import make_backend
from icon2.engines.base import Backend, Sampling
from icon2.evaluate.cost import Meter
from icon2.evaluate.metered import stage_meter
from icon2.evaluate.scorers import make_scorer
from icon2.model.chat import render_prompt
from icon2.steps.baselines import Scorer, drop_reason
from icon2.steps.direction_file import DirectionFile, GammaScale, steering_vectors
from icon2.steps.selection import SCORED_SCHEMA, Selection, apply_command, grid_table, select


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
    scorer: Scorer,
    generation: Meter,
    annotation: Meter,
) -> pl.DataFrame:
    """One ``SCORED_SCHEMA`` row per (range, γ⁺, γ⁻, instruction).

    Args:
        rows: id, instruction, criterion of the subsample.
        ranges: name → 1-based controlled layers.
    """
    instructions = rows["instruction"].to_list()
    criteria = rows["criterion"].to_list()
    prompts = [render_prompt(tokenizer, x, system) for x in instructions]
    gammas = [*gammas_pos, *gammas_neg]
    n = len(prompts)
    read_before = int(getattr(scorer, "tokens_read", 0))
    out: list[dict[str, Any]] = []
    for name, layers in ranges.items():
        vectors = steering_vectors(
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
        with annotation:
            scores = scorer.score(instructions * len(gammas), texts)
        by_gamma = {
            (j, i): (gens[j * n + i], float(scores[j * n + i]))
            for j in range(len(gammas))
            for i in range(n)
        }
        for a, gp in enumerate(gammas_pos):
            for b, gn in enumerate(gammas_neg, start=len(gammas_pos)):
                for i, rid in enumerate(rows["id"].to_list()):
                    (c, rc), (r, rr) = by_gamma[a, i], by_gamma[b, i]
                    keep = (
                        drop_reason(
                            c.text, r.text, c.finish_reason == "stop", r.finish_reason == "stop"
                        )
                        is None
                    )
                    out.append(
                        {
                            "layer_range": name,
                            "layers": layers,
                            "gamma_pos": gp,
                            "gamma_neg": gn,
                            "id": rid,
                            "chosen_reward": rc,
                            "rejected_reward": rr,
                            "kept": keep,
                        }
                    )
    annotation.tokens_read += int(getattr(scorer, "tokens_read", 0)) - read_before
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


@dataclass(frozen=True)
class GridRun:
    """The ``selection`` stage's results."""

    scored: pl.DataFrame  # one ``SCORED_SCHEMA`` row per generated pair
    cells: pl.DataFrame  # one ``GRID_SCHEMA`` row per grid cell
    pick: Selection | None
    reason: str  # what was picked and why, or why nothing could be
    scorer: str  # the scorer's name
    instructions: int  # the subsample's size
    meters: list[Meter]  # response generation, preference annotation (cost, A8)

    def summary(self) -> dict[str, Any]:
        """The chosen setting as the stage reports it (``selected.json``)."""
        return {
            "selected": None if self.pick is None else self.pick.to_json(),
            "reason": self.reason,
            "apply": apply_command(self.pick),
            "scorer": self.scorer,
            "instructions": self.instructions,
            "cells": self.cells.height,
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
) -> GridRun:
    """A6 with the ``select`` section: score the γ⁺ × γ⁻ × ``ranges`` grid on a seeded
    subsample of ``kept`` (the filter stage's table) and apply the appendix-J rule.

    Generation uses the ``pairs`` decoding settings (``select.max_new_tokens`` if set) on
    the engine ``base.engine`` names; answers are scored by the ``baselines`` section's
    reward model or judge (default: the starting model rating its own answers).
    """
    cfg, pc = p.select, p.pairs
    rows = subsample(kept, cfg.instructions, p.base.seed if cfg.seed is None else cfg.seed)
    # Its own method in the cost table: tuning work, outside the ICON² / baseline ratio.
    method, device = "icon2 selection", p.base.device
    generation = stage_meter("selection", method, "response generation", device)
    annotation = stage_meter("selection", method, "preference annotation", device)
    scorer = make_scorer(
        p.baselines.reward_model,
        p.baselines.judge,
        (model, tokenizer, model_name),
        dtype=p.base.dtype,
        batch_size=p.baselines.batch_size,
    )
    scored = grid_scores(
        make_backend(p, model_dir, model, tokenizer, batch_size=pc.batch_size, steering=True),
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
        generation=generation,
        annotation=annotation,
    )
    cells = grid_table(scored)
    pick, reason = select(cells, min_share=cfg.min_share)
    return GridRun(scored, cells, pick, reason, scorer.name, rows.height, [generation, annotation])
