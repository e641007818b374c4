"""SPA (METHOD part B, eqs. 7–8): order two sampled responses by the implicit DPO reward.

r(y) = β [log π_{t−1}(y|x) − log π_init(y|x)] − a·|y|
(y_w, y_l) = (y1, y2) if σ(r(y1) − r(y2)) > 0.5 else (y2, y1)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.errors import InputError, ParamsError
from icon2.core.params import Params
from icon2.core.processes import all_ranks, process_state
from icon2.core.tables import SPA_PAIR_SCHEMA
from icon2.engines import open_backend
from icon2.engines.base import Backend, Sampling
from icon2.model.chat import render_prompt, system_turn
from icon2.model.logprobs import response_logps

# The counts an iteration reports in its metrics (the rest describe the sampling).
HEADLINE = ("pairs", "truncated_responses", "tied_rewards", "mean_reward_gap")


def length_penalised_reward(
    logp_policy: torch.Tensor, logp_init: torch.Tensor, lengths: torch.Tensor, beta: float, a: float
) -> torch.Tensor:
    """SPA labelling reward ``beta (log pi_t(y|x) - log pi_init(y|x)) - a |y|``, shape ``[B]``.

    Raises:
        ValueError: If ``beta <= 0``, ``a < 0`` or the shapes differ.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if a < 0:
        raise ValueError(f"a must be >= 0, got {a}")
    if not logp_policy.shape == logp_init.shape == lengths.shape:
        raise ValueError(f"shape mismatch: {logp_policy.shape}, {logp_init.shape}, {lengths.shape}")
    return beta * (logp_policy - logp_init) - a * lengths.to(logp_policy.dtype)


def prefer_first(reward1: torch.Tensor, reward2: torch.Tensor) -> torch.Tensor:
    """Whether ``p(y1 > y2) = sigmoid(r1 - r2) > 0.5``, as a bool ``[B]`` tensor.

    Compared as ``r1 - r2 > 0``, which is equivalent but immune to sigmoid rounding to exactly
    0.5 for tiny differences. Ties give False.
    """
    if reward1.shape != reward2.shape:
        raise ValueError(f"shape mismatch: {reward1.shape} vs {reward2.shape}")
    return (reward1 - reward2) > 0


def order_pairs(
    policy: PreTrainedModel,
    init: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    instructions: Sequence[str],
    first: Sequence[str],
    second: Sequence[str],
    *,
    beta: float,
    length_penalty: float,
    ended: tuple[Sequence[bool], Sequence[bool]] | None = None,
    system: str | None = None,
    batch_size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first_wins [n] bool, reward_first [n], reward_second [n]) by eqs. 7–8."""
    rewards = []
    flags = ended or (None, None)
    for responses, done in zip((first, second), flags, strict=True):
        pol, n_tok = response_logps(
            policy,
            tokenizer,
            instructions,
            responses,
            ended=done,
            system=system,
            batch_size=batch_size,
        )
        ini, _ = response_logps(
            init,
            tokenizer,
            instructions,
            responses,
            ended=done,
            system=system,
            batch_size=batch_size,
        )
        rewards.append(length_penalised_reward(pol, ini, n_tok.double(), beta, length_penalty))
    return prefer_first(rewards[0], rewards[1]), rewards[0], rewards[1]


@dataclass(frozen=True)
class Annotation:
    """One SPA iteration's self-annotated pairs (``SPA_PAIR_SCHEMA``) and its counts."""

    table: pl.DataFrame
    counts: dict[str, int | float]

    def headline(self) -> dict[str, int | float]:
        """The counts named in ``HEADLINE``, for the iteration's metrics."""
        return {k: self.counts[k] for k in HEADLINE}


def check_previous(previous: Path, iteration: str) -> None:
    """π_{t−1} must exist before iteration t runs.

    Raises:
        ParamsError: naming ``spa.iterations.<t>.previous``.
    """
    if not previous.is_dir():
        raise ParamsError(
            f"spa.iterations.{iteration}.previous: {previous} does not exist; run the stage "
            f"that writes it first (`dvc repro spa/dvc.yaml` runs them in order)"
        )


def prompt_slice(texts: Sequence[str], iteration: int, size: int, where: str) -> list[str]:
    """The ``iteration``-th (1-based) disjoint slice of ``size`` prompts."""
    chunk = list(texts[(iteration - 1) * size : iteration * size])
    if not chunk:
        raise InputError(
            f"{where}: no prompts left for spa iteration {iteration} "
            f"({len(texts)} prompts, {size} per iteration)"
        )
    return chunk


def self_annotate(
    backend: Backend,
    policy: PreTrainedModel,
    init: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    instructions: Sequence[str],
    *,
    sampling: Sampling,
    system: str | None,
    beta: float,
    length_penalty: float,
    label: str = "spa",
    batch_size: int = 8,
) -> Annotation:
    """Part B steps 1a–1b: sample two answers per prompt from π_{t−1}, order them by eq. 7–8.

    Both answers are sampled and scored under the same rendered prompt (``system`` turn
    included), and a truncated answer is scored without an end-of-turn token it never
    produced. METHOD part B samples up to a token budget and compares what comes out:
    unlike the steered pairs (A4), truncated answers are kept; only pairs with an empty
    answer or two identical answers are dropped (nothing to compare).
    """
    prompts = [render_prompt(tokenizer, x, system) for x in instructions]
    gens = backend.generate(prompts * 2, sampling, desc=f"{label} sample")
    n = len(instructions)
    first, second = gens[:n], gens[n:]
    keep = [
        i
        for i in range(n)
        if first[i].text.strip()
        and second[i].text.strip()
        and first[i].text.strip() != second[i].text.strip()
    ]
    if not keep:
        raise InputError(
            f"{label}: all {n} response pairs were empty or identical; "
            f"raise spa.temperature or spa.max_new_tokens"
        )
    ended = (
        [first[i].finish_reason == "stop" for i in keep],
        [second[i].finish_reason == "stop" for i in keep],
    )
    finish = ([first[i].finish_reason for i in keep], [second[i].finish_reason for i in keep])
    xs = [instructions[i] for i in keep]
    y1 = [first[i].text.strip() for i in keep]
    y2 = [second[i].text.strip() for i in keep]
    first_wins, r1, r2 = order_pairs(
        policy,
        init,
        tokenizer,
        xs,
        y1,
        y2,
        beta=beta,
        length_penalty=length_penalty,
        ended=ended,
        system=system,
        batch_size=batch_size,
    )
    head = system_turn(system)
    rows = []
    for j, x in enumerate(xs):
        wins = bool(first_wins[j])
        rows.append(
            {
                "split": "train",
                "prompt": [*head, {"role": "user", "content": x}],
                "chosen": [{"role": "assistant", "content": y1[j] if wins else y2[j]}],
                "rejected": [{"role": "assistant", "content": y2[j] if wins else y1[j]}],
                "reward_chosen": float(r1[j] if wins else r2[j]),
                "reward_rejected": float(r2[j] if wins else r1[j]),
                "chosen_finish": finish[0][j] if wins else finish[1][j],
                "rejected_finish": finish[1][j] if wins else finish[0][j],
            }
        )
    table = pl.DataFrame(rows, schema=SPA_PAIR_SCHEMA)
    gap = (table["reward_chosen"] - table["reward_rejected"]).to_numpy()
    counts: dict[str, int | float] = {
        "prompts": n,
        "pairs": table.height,
        "dropped": n - table.height,
        "truncated_responses": sum(not e for side in ended for e in side),
        "first_preferred": int(first_wins.sum()),
        "tied_rewards": int((gap == 0).sum()),
        "mean_reward_gap": float(gap.mean()),
    }
    return Annotation(table, counts)


def merge_annotations(parts: Sequence[Annotation]) -> Annotation:
    """One annotation from per-process shards of the prompts (training on several
    processes): tables concatenated in order, counts summed, the mean reward gap recomputed."""
    if len(parts) == 1:
        return parts[0]
    table = pl.concat([a.table for a in parts])
    gap = (table["reward_chosen"] - table["reward_rejected"]).to_numpy()
    counts = {k: sum(a.counts[k] for a in parts) for k in parts[0].counts}
    counts["mean_reward_gap"] = float(gap.mean())
    return Annotation(table, counts)


def annotate_iteration(
    p: Params,
    iteration: str,
    previous: Path,
    policy: PreTrainedModel,
    init: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    instructions: Sequence[str],
    *,
    seed: int,
) -> Annotation:
    """Part B steps 1a–1b of ``spa@<iteration>`` with the ``spa`` section, on the engine
    ``base.engine`` names for π_{t−1} (``policy``, loaded from ``previous``).

    With several processes each samples and labels its share of ``instructions`` (every
    ``num_processes``-th, seeded ``seed + process_index``) and every process gets the merged
    annotation of all of them, in rank order.
    """
    cfg, rank = p.spa, process_state()
    # Labelling reads with π_{t−1} and π_0 after sampling: with vLLM the engine stops after
    # its call and both come back to the GPU.
    engine = open_backend(
        p, previous, policy, tokenizer, batch_size=cfg.batch_size, resident=[init],
        close_between_calls=True,
    )  # fmt: skip
    with engine as backend:
        annotation = self_annotate(
            backend,
            policy,
            init,
            tokenizer,
            instructions[rank.process_index :: rank.num_processes],
            sampling=Sampling(
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                seed=seed + rank.process_index,
            ),
            system=p.base.system_prompt,
            beta=cfg.beta,
            length_penalty=cfg.length_penalty,
            label=f"spa@{iteration}",
        )
    return merge_annotations(all_ranks(annotation))
