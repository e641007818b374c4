"""A3 scoring: how strongly each instruction's hidden state points along each criterion.

consistency_{i,c} = mean_l h^l_i · u^l_c over the selected layers (spec eq. 2); the assigned
criterion is the argmax over c and the score its value (eq. 3). Raw dot products of
different criteria are not on a common scale (their directions live in regions of different
norm), so the table also carries per-criterion standardised scores and records which scale
chose the criterion. Reading the states is done elsewhere; these are pure functions.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.tables import score_schema
from icon2.model.chat import pre_query_template, render_prompt
from icon2.model.states import last_token_states
from icon2.steps.direction_file import DirectionFile


def consistency(
    states: torch.Tensor, directions: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Mean over layers of the dot product between each state and each criterion direction.

    Args:
        states: [n, L, d] last-token states of the n instructions at the L selected layers.
        directions: criterion -> [L, d] unit directions for the same L layers, same order.

    Returns:
        criterion -> [n] float64 consistency scores, in the order of ``directions``.

    Raises:
        ValueError: ``states`` is not 3-D, or a criterion's directions are not [L, d].
    """
    if states.ndim != 3:
        raise ValueError(f"states must be [n, L, d], got shape {tuple(states.shape)}")
    want = tuple(states.shape[1:])
    # Accumulate in float64: summing d products of float32 loses digits that the argmax
    # between close criteria can depend on.
    h = states.double()
    out: dict[str, torch.Tensor] = {}
    for name, u in directions.items():
        if tuple(u.shape) != want:
            raise ValueError(
                f"directions for criterion {name!r} have shape {tuple(u.shape)}; "
                f"expected [L, d] = {list(want)} to match states {tuple(states.shape)}"
            )
        out[name] = torch.einsum("nld,ld->nl", h, u.double()).mean(dim=1)
    return out


def _standardise(x: np.ndarray) -> np.ndarray:
    """(x − mean) / population std; all zeros when the std is 0 (no spread to rank by)."""
    if x.size == 0:
        return x.copy()
    sd = float(x.std())
    return np.zeros_like(x) if sd == 0.0 else (x - x.mean()) / sd


def score_table(
    ids: list[str],
    instructions: list[str],
    scores: dict[str, torch.Tensor],
    *,
    standardise: bool,
) -> pl.DataFrame:
    """One row per instruction with raw and standardised scores and the assigned criterion.

    Args:
        ids: unique instruction ids, one per row.
        instructions: instruction texts, aligned with ``ids``.
        scores: criterion -> [n] raw consistency scores (from :func:`consistency`).
        standardise: choose the criterion on the standardised scale instead of the raw one.

    Returns:
        Columns ``id``, ``instruction``, ``raw_<c>`` and ``std_<c>`` per criterion (dict
        order), ``criterion`` (argmax on the scale used; ties go to the first criterion),
        ``consistency`` (the max on that scale), ``margin`` (best − runner-up on that scale,
        +inf with a single criterion) and ``standardised`` (the flag, constant). Schema:
        :func:`score_schema`.

    Raises:
        ValueError: no criteria, mismatched lengths, duplicate ids or non-finite scores.
    """
    names = list(scores)
    if not names:
        raise ValueError("score_table needs at least one criterion")
    n = len(ids)
    if len(instructions) != n:
        raise ValueError(f"{n} ids but {len(instructions)} instructions")
    if len(set(ids)) != n:
        raise ValueError("instruction ids must be unique (the split and tie-breaks use them)")
    raw = {}
    for c in names:
        x = scores[c].detach().double().cpu().reshape(-1).numpy()
        if x.shape[0] != n:
            raise ValueError(f"criterion {c!r} has {x.shape[0]} scores for {n} instructions")
        if not np.isfinite(x).all():
            bad = ids[int(np.flatnonzero(~np.isfinite(x))[0])]
            raise ValueError(f"criterion {c!r} has a non-finite score (first at id {bad!r})")
        raw[c] = x
    std = {c: _standardise(raw[c]) for c in names}
    used = np.stack([(std if standardise else raw)[c] for c in names], axis=1)  # [n, C]
    # np.argmax returns the first maximum, which is the dict-order tie-break we promise.
    best = used.argmax(axis=1)
    top = used[np.arange(n), best]
    if len(names) > 1:
        runner_up = np.sort(used, axis=1)[:, -2]
        margin = top - runner_up
    else:
        margin = np.full(n, np.inf)
    columns: dict[str, object] = {"id": ids, "instruction": instructions}
    columns.update({f"raw_{c}": raw[c] for c in names})
    columns.update({f"std_{c}": std[c] for c in names})
    columns.update(
        {
            "criterion": [names[int(b)] for b in best],
            "consistency": top,
            "margin": margin,
            "standardised": [standardise] * n,
        }
    )
    return pl.DataFrame(columns, schema=score_schema(names))


def score_instructions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dfile: DirectionFile,
    table: pl.DataFrame,
    *,
    layers: list[int],
    standardise: bool,
    batch_size: int,
) -> pl.DataFrame:
    """Eqs. 2–3 for every instruction of ``table`` (columns id, instruction).

    Each instruction is rendered as a user turn with no system prompt, read at the same
    position as the directions were (``read_position`` in the file's metadata), and its
    last-token states at ``layers`` are projected on every criterion's direction.
    """
    texts = [
        render_prompt(tokenizer, t, None, dfile.meta["read_position"])
        for t in table["instruction"].to_list()
    ]
    states = last_token_states(
        model,
        tokenizer,
        texts,
        layers=layers,
        batch_size=batch_size,
        shared_prefix=pre_query_template(tokenizer),
        desc="score",
    )
    rows = [dfile.layers.index(layer) for layer in layers]
    dirs = {c: cd.direction[rows] for c, cd in dfile.criteria.items()}
    return score_table(
        table["id"].to_list(),
        table["instruction"].to_list(),
        consistency(states, dirs),
        standardise=standardise,
    )


def score_plot_frame(scored: pl.DataFrame, criteria: list[str], standardise: bool) -> pl.DataFrame:
    """Long (criterion, score) rows on the scale the argmax used, for the histogram plot."""
    col = "std" if standardise else "raw"
    return pl.concat(
        [
            scored.select(pl.lit(c).alias("criterion"), pl.col(f"{col}_{c}").alias("score"))
            for c in criteria
        ]
    )
