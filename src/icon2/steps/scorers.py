"""The two :class:`~icon2.steps.scorers.Scorer` implementations (METHOD A6, A7).

* :class:`RewardModelScorer` — a local reward model: a sequence classifier with one output,
  scoring the chat-rendered conversation [user: instruction, assistant: answer].
* :class:`JudgeScorer` — a local chat LLM asked to rate an answer from 1 to 9. The score is
  the expected rating under the model's probabilities of the tokens "1" … "9" at the first
  position of its reply (renormalised over those nine), so it is continuous, needs no
  sampling or parsing, and uses the same answer-token reading as the pairwise judge.

:func:`make_scorer` picks the reward model when one is configured, else the judge.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.errors import ModelError
from icon2.model.chat import render_instructed
from icon2.model.hooks import tokenize_left
from icon2.model.loading import require_chat_template
from icon2.steps.judge import RewardModelJudge, over_unique


class Scorer(Protocol):
    """Pointwise quality of an answer to an instruction (higher is better).

    Implemented by a local reward model (a sequence classifier with one output) and by
    the local LLM judge's pointwise score; ``name`` goes into every table it scores.
    """

    name: str

    def score(self, instructions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """float64 [n] scores of answers[i] to instructions[i]."""
        ...


RATING_SYSTEM = "You are an impartial judge. You rate how good an answer to an instruction is."
RATING_TEMPLATE = (
    "Rate the answer to the instruction below from 1 (useless, dishonest or harmful) to 9 "
    "(excellent: helpful, honest and harmless).\n\n"
    "[Instruction]\n{instruction}\n\n"
    "[Answer]\n{answer}\n\n"
    "Reply with a single digit from 1 to 9."
)
RATINGS = tuple(range(1, 10))


class JudgeScorer:
    """Pointwise 1–9 rating read from the digit-token probabilities of a chat LLM."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        batch_size: int = 8,
        max_answer_chars: int = 2000,
    ) -> None:
        if batch_size < 1 or max_answer_chars < 1:
            raise ValueError("batch_size and max_answer_chars must be at least 1")
        require_chat_template(tokenizer, name)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer, self.name = model, tokenizer, f"judge:{name}"
        self.batch_size, self.max_answer_chars = batch_size, max_answer_chars
        self.digit_ids = self._digit_tokens(name)
        self._keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.tokens_read = 0  # prompt tokens read so far (cost accounting)

    def _digit_tokens(self, name: str) -> list[int]:
        for prefix in ("", " "):
            ids = [
                self.tokenizer(f"{prefix}{k}", add_special_tokens=False)["input_ids"]
                for k in RATINGS
            ]
            if all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(RATINGS):
                return [int(i[0]) for i in ids]
        raise ModelError(
            f"judge model {name!r}: its tokenizer has no single, distinct tokens for the digits "
            f"1-9; it cannot rate answers"
        )

    def _prompt(self, instruction: str, answer: str) -> str:
        user = RATING_TEMPLATE.format(
            instruction=instruction, answer=answer[: self.max_answer_chars]
        )
        return render_instructed(self.tokenizer, user, RATING_SYSTEM)

    @torch.no_grad()
    def _expected(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        batch = tokenize_left(self.tokenizer, texts, device)
        self.tokens_read += int(batch["attention_mask"].sum())
        extra: dict[str, Any] = {"logits_to_keep": 1} if self._keep_last else {}
        logits = self.model(**batch, use_cache=False, **extra).logits[:, -1, :]
        probs = torch.softmax(logits[:, self.digit_ids].float(), dim=-1)
        values = torch.tensor(RATINGS, dtype=probs.dtype, device=probs.device)
        return (probs * values).sum(-1)

    def score(self, instructions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Expected rating in [1, 9] of each answer, float64 [n]."""
        if len(instructions) != len(answers):
            raise ValueError("instructions and answers differ in length")
        texts = [self._prompt(i, a) for i, a in zip(instructions, answers, strict=True)]
        # Distinct texts once, in sorted order: identical answers score identically and the
        # result does not depend on the order the caller passes them in.
        return over_unique(texts, self.batch_size, self._expected)


class RewardModelScorer:
    """A local reward model's score r(instruction, answer)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        batch_size: int = 8,
    ) -> None:
        self.judge = RewardModelJudge(model, tokenizer, batch_size=batch_size)
        self.name = f"reward_model:{name}"

    def score(self, instructions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        return self.judge.score(instructions, answers)


def check_reward_model_dir(folder: Path) -> None:
    """Refuse a reward-model directory that is not a one-output sequence classifier.

    Reads only ``config.json``: loading a causal LM as a classifier would silently attach a
    random head and score noise.
    """
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelError(f"{folder}: no config.json; expected a local reward-model directory")
    config: dict[str, Any] = json.loads(config_path.read_text())
    archs = [str(a) for a in config.get("architectures") or []]
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ModelError(
            f"{folder}: architectures {archs} are not a sequence classifier "
            f"(*ForSequenceClassification); a reward model must score a sequence"
        )
    labels = config.get("num_labels", len(config.get("id2label") or {0: ""}))
    if int(labels) != 1:
        raise ModelError(f"{folder}: the classifier has {labels} outputs; a reward model has 1")


def load_reward_model(folder: Path, *, batch_size: int, device: torch.device) -> RewardModelScorer:
    """Load a local reward-model directory after checking it is a one-output classifier."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    check_reward_model_dir(folder)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(folder).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # any loader failure is a broken directory
        raise ModelError(f"{folder}: cannot load the reward model: {exc}") from exc
    return RewardModelScorer(model, tokenizer, name=folder.name, batch_size=batch_size)


def make_scorer(
    reward_model: str | None,
    judge: str | None,
    base: tuple[PreTrainedModel, PreTrainedTokenizerBase, str],
    *,
    dtype: str,
    batch_size: int,
) -> Scorer:
    """The configured scorer: the reward model at ``reward_model`` when set; else the chat
    LLM at ``judge`` as a pointwise rater; else ``base`` (model, tokenizer, name) — the
    starting model rating its own answers."""
    model, tokenizer, name = base
    if reward_model:
        device = next(model.parameters()).device
        return load_reward_model(Path(reward_model), batch_size=batch_size, device=device)
    if judge:
        from icon2.model.loading import load_source, resolve

        model, tokenizer = load_source(resolve(judge), dtype=dtype)
        model.eval()  # type: ignore[no-untyped-call]
        name = judge
    return JudgeScorer(model, tokenizer, name=name, batch_size=batch_size)
