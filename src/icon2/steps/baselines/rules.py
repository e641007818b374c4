"""A7: how the four baselines turn candidate answers into one (chosen, rejected) pair.

Generation and scoring happen elsewhere (through the engine interface and a
:class:`Scorer`); this module holds the selection rules as pure functions, so each rule is
testable on texts and numbers alone:

* **Sampling-Ranking** — k = 5 samples; a scorer ranks them; chosen = best, rejected =
  worst (:func:`rank_samples`).
* **Self-Rewarding** — the model judges its own two samples pairwise, reading P("A") in
  both orders (:func:`pairwise_choice`).
* **Self-Refine** — k = 3 samples; the model refines the first one → chosen; rejected = a
  seeded-random original (:func:`refine_rejected_index`, :func:`refine_message`).
* **Direct prompting (SP)** — chosen under the criterion's positive system prompt,
  rejected under its negative one (:func:`direct_prompt_systems`); the training prompt
  carries neither, so the pair teaches what the system prompt caused.

Pairs that carry no signal are dropped and counted, as in A4: an empty or truncated side,
identical texts, or a tie (equal scores, an undecided judge).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from icon2.core.errors import InputError
from icon2.steps.drops import DROP_REASONS as PAIR_DROP_REASONS
from icon2.steps.drops import drop_reason
from icon2.steps.scorers import Scorer

METHODS = ("icon2", "sampling_ranking", "self_rewarding", "self_refine", "direct_prompting")
BASELINES = METHODS[1:]
DROP_REASONS = (*PAIR_DROP_REASONS, "tied")  # A4's rule, then a tie of scores or judge
SAMPLES = {"sampling_ranking": 5, "self_rewarding": 2, "self_refine": 3, "direct_prompting": 1}

REFINE_TEMPLATE = (
    "Here is an instruction and a draft answer to it.\n\n"
    "[Instruction]\n{instruction}\n\n"
    "[Draft answer]\n{answer}\n\n"
    "Write an improved answer: more helpful, more honest and more harmless, and correct any "
    "mistakes in the draft. Reply with the improved answer only."
)


@dataclass(frozen=True)
class Choice:
    """One kept pair: the texts and, where a scorer or judge decided, its numbers."""

    chosen: str
    rejected: str
    chosen_score: float | None = None
    rejected_score: float | None = None


def check_method(name: str) -> str:
    """``name`` if it is a known method, else InputError listing the known ones."""
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; expected one of {list(METHODS)}")
    return name


def score_samples(
    scorer: Scorer, instructions: Sequence[str], samples: Sequence[Sequence[str]]
) -> np.ndarray:
    """Score every sample of every instruction in one call → float64 [n, k]."""
    k = len(samples[0]) if samples else 0
    if any(len(s) != k for s in samples) or len(samples) != len(instructions):
        raise ValueError("need one equal-length list of samples per instruction")
    flat_i = [i for i, s in zip(instructions, samples, strict=True) for _ in s]
    flat_a = [a for s in samples for a in s]
    scores = np.asarray(scorer.score(flat_i, flat_a), dtype=np.float64)
    return scores.reshape(len(samples), k)


def rank_samples(
    samples: Sequence[Sequence[str]],
    scores: np.ndarray,
    finished: np.ndarray | None = None,
) -> tuple[list[Choice | None], dict[str, int]]:
    """Sampling-Ranking: best eligible sample → chosen, worst → rejected.

    A sample is eligible when its text is non-empty and it finished (``finished``, default
    all True). Ties break deterministically: the best is the *first* of the equal maxima,
    the worst the *last* of the equal minima, so equal scores never pick one sample twice.

    Args:
        samples: [n][k] texts.
        scores: float [n, k].
        finished: bool [n, k], True where generation stopped at end of turn.

    Returns:
        (one Choice or None per instruction, counts of each drop reason).
    """
    s = np.asarray(scores, dtype=np.float64)
    k = s.shape[1] if s.ndim == 2 else -1
    if s.shape != (len(samples), k) or any(len(x) != k for x in samples):
        raise ValueError(f"scores {s.shape} do not match {len(samples)} lists of samples")
    done = np.ones_like(s, dtype=bool) if finished is None else np.asarray(finished, dtype=bool)
    counts = dict.fromkeys(DROP_REASONS, 0)
    out: list[Choice | None] = []
    for texts, row, ok in zip(samples, s, done, strict=True):
        nonempty = np.array([bool(t.strip()) for t in texts])
        eligible = np.flatnonzero(nonempty & ok)
        reason = None
        if eligible.size < 2:
            # Fewer than two usable samples: blame emptiness first, as A4 does.
            reason = "empty" if nonempty.sum() < 2 else "truncated"
        else:
            vals = row[eligible]
            best = int(eligible[np.flatnonzero(vals == vals.max())[0]])
            worst = int(eligible[np.flatnonzero(vals == vals.min())[-1]])
            if vals.max() == vals.min():
                reason = "tied"
            elif texts[best].strip() == texts[worst].strip():
                reason = "identical"
        if reason:
            counts[reason] += 1
            out.append(None)
            continue
        out.append(
            Choice(texts[best].strip(), texts[worst].strip(), float(row[best]), float(row[worst]))
        )
    return out, counts


def pairwise_choice(
    first: Sequence[str],
    second: Sequence[str],
    p_a_first_shown: np.ndarray,
    p_a_second_shown: np.ndarray,
    *,
    finished: np.ndarray | None = None,
    tie_margin: float = 0.0,
) -> tuple[list[Choice | None], dict[str, int]]:
    """Self-Rewarding: keep the pair the model's own pairwise judgement decides.

    ``p_a_first_shown[i]`` is P("A") with ``first[i]`` shown as answer A and ``second[i]``
    as B; ``p_a_second_shown[i]`` the same with the order swapped. P(first better) =
    0.5 + 0.5·(p_a_first_shown − p_a_second_shown), which cancels the judge's position
    bias. Pairs are dropped by A4's rules first (``finished``: bool [n, 2], default all
    True), then as a tie when |P − 0.5| ≤ tie_margin; the scores stored are P and 1 − P.
    """
    a = np.asarray(p_a_first_shown, dtype=np.float64)
    b = np.asarray(p_a_second_shown, dtype=np.float64)
    if not len(first) == len(second) == a.size == b.size:
        raise ValueError("first, second and both probability arrays must have one length")
    if not 0.0 <= tie_margin < 0.5:
        raise ValueError(f"tie_margin must be in [0, 0.5), got {tie_margin}")
    done = np.ones((a.size, 2), dtype=bool) if finished is None else np.asarray(finished, bool)
    if done.shape != (a.size, 2):
        raise ValueError(f"finished must be [n, 2] = {(a.size, 2)}, got {done.shape}")
    p_first = 0.5 + 0.5 * (a - b)
    counts = dict.fromkeys(DROP_REASONS, 0)
    out: list[Choice | None] = []
    for x, y, p, (dx, dy) in zip(first, second, p_first, done, strict=True):
        x, y = x.strip(), y.strip()
        reason = drop_reason(x, y, bool(dx), bool(dy))
        if reason is None and abs(p - 0.5) <= tie_margin:
            reason = "tied"
        if reason:
            counts[reason] += 1
            out.append(None)
            continue
        p = float(p)
        out.append(Choice(x, y, p, 1.0 - p) if p > 0.5 else Choice(y, x, 1.0 - p, p))
    return out, counts


def refine_message(instruction: str, draft: str) -> str:
    """The user turn asking the model to improve its own draft (Self-Refine)."""
    return REFINE_TEMPLATE.format(instruction=instruction, answer=draft)


def refine_rejected_index(ids: Sequence[str], k: int, seed: int) -> np.ndarray:
    """Which of the k originals is each instruction's rejected answer (Self-Refine).

    A hash of (seed, id) — not a shared random stream — so an instruction's choice does not
    change when other instructions are added, removed or reordered.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return np.array(
        [int(hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:15], 16) % k for i in ids],
        dtype=np.int64,
    )


def direct_prompt_systems(
    criteria: Sequence[str], prompts: Mapping[str, tuple[str, str]]
) -> tuple[list[str], list[str]]:
    """Direct prompting: the (positive, negative) system prompt of each row's criterion.

    Raises:
        InputError: a criterion without prompts (the message lists the known ones).
    """
    unknown = sorted(set(criteria) - set(prompts))
    if unknown:
        raise InputError(
            f"no system prompts for criteria {unknown}; directions.prompts has {sorted(prompts)}"
        )
    return [prompts[c][0] for c in criteria], [prompts[c][1] for c in criteria]
