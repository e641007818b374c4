"""A7 as the ``baselines@<method>`` stage runs it: one baseline's pairs from the params.

:func:`run_baseline` builds the engine, the decoding settings and the meters from the
``pairs`` and ``baselines`` sections, runs the method's generator from
:mod:`icon2.steps.baselines.pairs` and turns its choices into the pair table and counts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.cost import Meter
from icon2.core.errors import InputError
from icon2.core.params import Params
from icon2.engines import open_backend
from icon2.engines.base import Sampling
from icon2.engines.metered import engine_devices, stage_meter
from icon2.steps.baselines.pairs import (
    BaselineInputs,
    direct_prompting,
    pair_table,
    sampling_ranking,
    self_refine,
    self_rewarding,
)
from icon2.steps.judge import LMJudge
from icon2.steps.scorers import make_scorer


@dataclass(frozen=True)
class BaselineRun:
    """One baseline's pairs and what the stage reports about them."""

    pairs: pl.DataFrame  # ``BASELINE_PAIR_SCHEMA``
    metrics: dict[str, Any]  # instructions, pairs, train, validation, dropped (by reason)
    decided_by: str  # what chose chosen vs rejected (the ``scorer`` column)
    meters: list[Meter]  # response generation, preference annotation (cost, A8)


def run_baseline(
    method: str,
    p: Params,
    model_dir: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_name: str,
    kept: pl.DataFrame,
) -> BaselineRun:
    """A7 for one of ``BASELINES`` on the first ``pairs.max_instructions`` rows of ``kept``
    (id, instruction, criterion, split), with the ``pairs`` decoding settings, the
    ``baselines`` section and the engine ``base.engine`` names.

    Raises:
        InputError: every pair was dropped.
    """
    cfg, pc, seed = p.baselines, p.pairs, p.base.seed
    if pc.max_instructions is not None:
        kept = kept.head(pc.max_instructions)
    stage = f"baselines@{method}"
    greedy = Sampling(
        max_new_tokens=pc.max_new_tokens,
        temperature=pc.temperature,
        top_p=pc.top_p,
        repetition_penalty=pc.repetition_penalty,
        seed=seed,
    )
    # Every method reads with the HF model between its generations (judge, scorer): with
    # vLLM the engine stops after each call and the model comes back to the GPU.
    engine = open_backend(
        p, model_dir, model, tokenizer, batch_size=pc.batch_size, close_between_calls=True
    )
    with engine as backend:
        inp = BaselineInputs(
            backend=backend,
            tokenizer=tokenizer,
            kept=kept,
            greedy=greedy,
            sampled=replace(greedy, temperature=cfg.temperature, top_p=cfg.top_p),
            system=p.base.system_prompt,
            generation=stage_meter(
                stage, method, "response generation", p.base.device, engine_devices(p)
            ),
            annotation=stage_meter(stage, method, "preference annotation", p.base.device),
        )
        if method == "sampling_ranking":
            scorer = make_scorer(
                cfg.reward_model,
                cfg.judge,
                (model, tokenizer, model_name),
                dtype=p.base.dtype,
                batch_size=cfg.batch_size,
            )
            choices, counts = sampling_ranking(inp, scorer, cfg.samples_ranking)
            decided_by = scorer.name
        elif method == "self_rewarding":
            judge = LMJudge(model, tokenizer, batch_size=cfg.batch_size)
            choices, counts = self_rewarding(inp, judge, tie_margin=cfg.tie_margin)
            decided_by = f"self-judge:{model_name} (pairwise, both orders)"
        elif method == "self_refine":
            choices, counts = self_refine(inp, cfg.samples_refine, seed)
            decided_by = "none: chosen = refined answer, rejected = a seeded-random original"
        else:
            prompts = {c: (pp.positive, pp.negative) for c, pp in p.directions.prompts.items()}
            choices, counts = direct_prompting(inp, prompts)
            decided_by = (
                "none: chosen/rejected under the criterion's positive/negative system prompt"
            )
        pairs = pair_table(inp, choices, method=method, scorer=decided_by)
    if pairs.height == 0:
        raise InputError(
            f"{stage}: every pair was dropped ({counts}); raise pairs.max_new_tokens or check "
            f"the scorer"
        )
    train = pairs.filter(pl.col("split") == "train").height
    metrics = {
        "instructions": kept.height,
        "pairs": pairs.height,
        "train": train,
        "validation": pairs.height - train,
        "dropped": counts,
    }
    return BaselineRun(pairs, metrics, decided_by, [inp.generation, inp.annotation])
