"""Local judges for the ``evaluate`` stage: which of two answers to an instruction is better.

Two kinds share one interface, :class:`Judge`:

* :class:`LMJudge` shows an instruction-tuned LLM both answers and reads its preference from
  the log-probabilities of the reply tokens "A" and "B" (no sampling, no parsing). Each pair
  is judged in both orders and the two readings are averaged, which cancels position bias.
* :class:`RewardModelJudge` scores each answer with a reward model (a sequence classifier
  with one output) and compares the scores with a sigmoid (Bradley–Terry).

Both are symmetric: swapping the answers gives exactly ``1 − p``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from scipy.special import expit
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.errors import ModelError
from icon2.model.chat import messages, render, render_instructed
from icon2.model.hooks import tokenize_left
from icon2.model.loading import require_chat_template

JUDGE_SYSTEM = (
    "You are an impartial judge. You compare two answers to the same instruction and say "
    "which one is better, without regard to their order or length."
)
JUDGE_TEMPLATE = (
    "Which answer to the instruction below is better, that is more helpful, more honest and "
    "more harmless?\n\n"
    "[Instruction]\n{instruction}\n\n"
    "[Answer A]\n{answer_a}\n\n"
    "[Answer B]\n{answer_b}\n\n"
    "Reply with a single letter, A or B."
)


class Judge(Protocol):
    def prefer_first(
        self, instructions: Sequence[str], first: Sequence[str], second: Sequence[str]
    ) -> np.ndarray:
        """P(first answer better than second), float64 ``[n]`` in [0, 1]."""
        ...


def _check_lengths(*columns: Sequence[str]) -> int:
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError(f"instructions and answers differ in length: {[len(c) for c in columns]}")
    return n


def over_unique(
    texts: Sequence[str], batch_size: int, run: Callable[[list[str]], torch.Tensor]
) -> np.ndarray:
    """``run`` each distinct text once, in batches, and map the results back to ``texts``.

    Batches are built from the sorted distinct texts, so the same set of texts is always
    batched the same way whatever order the caller passes them in. Padding changes float
    results slightly; this keeps a pair and its swap on bit-identical numbers (exact
    symmetry), and identical texts get identical values.
    """
    unique = sorted(set(texts), key=lambda t: (len(t), t))  # similar lengths pad less
    values: dict[str, float] = {}
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        values.update(zip(chunk, run(chunk).double().cpu().tolist(), strict=True))
    return np.array([values[t] for t in texts], dtype=np.float64)


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


class LMJudge:
    """Pairwise LLM judge reading P("A") vs P("B") at the first token of its reply.

    Answers are cut to ``max_answer_chars`` characters before they are shown, so one very
    long answer cannot push the prompt past the judge's context (the cut applies to both
    answers alike).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int = 8,
        max_answer_chars: int = 2000,
    ) -> None:
        name = str(getattr(model.config, "name_or_path", "") or "judge")
        if batch_size < 1 or max_answer_chars < 1:
            raise ValueError("batch_size and max_answer_chars must be at least 1")
        require_chat_template(tokenizer, name)
        if tokenizer.pad_token is None:  # left padding needs one; EOS is never read here
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_answer_chars = batch_size, max_answer_chars
        self.token_a, self.token_b = self._answer_tokens(name)
        # Only the last position's logits are needed; models that can skip the rest of the
        # LM head save [batch, length, vocab] floats of memory.
        self._keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters

    def _answer_tokens(self, name: str) -> tuple[int, int]:
        # Byte-level BPE vocabularies start a reply with "A"; SentencePiece ones encode a
        # word-initial "A" as "▁A", which is what encoding " A" yields in some of them.
        for a, b in (("A", "B"), (" A", " B")):
            ids_a = self.tokenizer(a, add_special_tokens=False)["input_ids"]
            ids_b = self.tokenizer(b, add_special_tokens=False)["input_ids"]
            if len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b:
                return int(ids_a[0]), int(ids_b[0])
        raise ModelError(
            f"judge model {name!r}: its tokenizer has no single, distinct tokens for the "
            f"answers 'A' and 'B'; it cannot be used as a pairwise judge"
        )

    def prompt(self, instruction: str, answer_a: str, answer_b: str) -> str:
        """The judge's input for one pair, answers shown in this order."""
        user = JUDGE_TEMPLATE.format(
            instruction=instruction,
            answer_a=answer_a[: self.max_answer_chars],
            answer_b=answer_b[: self.max_answer_chars],
        )
        return render_instructed(self.tokenizer, user, JUDGE_SYSTEM)

    @torch.no_grad()
    def _p_a(self, texts: list[str]) -> torch.Tensor:
        batch = tokenize_left(self.tokenizer, texts, _device(self.model))
        extra: dict[str, Any] = {"logits_to_keep": 1} if self._keep_last else {}
        logits = self.model(**batch, use_cache=False, **extra).logits[:, -1, :]
        pair = logits[:, [self.token_a, self.token_b]].float()
        return torch.softmax(pair, dim=-1)[:, 0]

    def order_probability(
        self, instructions: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str]
    ) -> np.ndarray:
        """P("A") over {"A", "B"} with the answers shown in this order, float64 ``[n]``."""
        _check_lengths(instructions, answers_a, answers_b)
        texts = [self.prompt(*row) for row in zip(instructions, answers_a, answers_b, strict=True)]
        return over_unique(texts, self.batch_size, self._p_a)

    def prefer_first(
        self, instructions: Sequence[str], first: Sequence[str], second: Sequence[str]
    ) -> np.ndarray:
        """0.5·(P_A(first, second) + 1 − P_A(second, first)): both orders, bias cancelled."""
        n = _check_lengths(instructions, first, second)
        both = self.order_probability(
            [*instructions, *instructions], [*first, *second], [*second, *first]
        )
        # Written as 0.5 + 0.5·(difference) so identical answers give exactly 0.5.
        return np.asarray(0.5 + 0.5 * (both[:n] - both[n:]), dtype=np.float64)


class RewardModelJudge:
    """Bradley–Terry judge from a reward model: P(first better) = σ(r_first − r_second).

    The score r is the model's single logit for the chat-rendered conversation
    [user: instruction, assistant: answer]; symmetric by construction.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int = 8,
    ) -> None:
        name = str(getattr(model.config, "name_or_path", "") or "reward model")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        require_chat_template(tokenizer, name)
        if int(getattr(model.config, "num_labels", 0)) != 1:
            raise ModelError(
                f"reward model {name!r}: expected a sequence classifier with num_labels == 1, "
                f"got {getattr(model.config, 'num_labels', None)}"
            )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # The classifier pools at the rightmost non-pad token, so it must know the pad id.
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    @torch.no_grad()
    def _scores(self, texts: list[str]) -> torch.Tensor:
        batch = tokenize_left(self.tokenizer, texts, _device(self.model))
        scores: torch.Tensor = self.model(**batch, use_cache=False).logits[:, 0]
        return scores.float()

    def score(self, instructions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Reward of each (instruction, answer), float64 ``[n]``."""
        _check_lengths(instructions, answers)
        texts = [
            render(
                self.tokenizer,
                [*messages(i), {"role": "assistant", "content": a}],
                add_generation_prompt=False,
            )
            for i, a in zip(instructions, answers, strict=True)
        ]
        return over_unique(texts, self.batch_size, self._scores)

    def prefer_first(
        self, instructions: Sequence[str], first: Sequence[str], second: Sequence[str]
    ) -> np.ndarray:
        """σ(r_first − r_second), float64 ``[n]``."""
        n = _check_lengths(instructions, first, second)
        r = self.score([*instructions, *instructions], [*first, *second])
        return np.asarray(expit(r[:n] - r[n:]), dtype=np.float64)
