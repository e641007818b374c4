"""Rendering conversations with the model's own chat template."""

from __future__ import annotations

from typing import Literal

from jinja2.exceptions import TemplateError
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.errors import ModelError

Message = dict[str, str]
SENTINEL = "\x00ICON2_USER_SENTINEL\x00"


def system_turn(system: str | None) -> list[Message]:
    """The conversation's head: one system message, or none when ``system`` is None."""
    return [] if system is None else [{"role": "system", "content": system}]


def messages(user: str, system: str | None = None) -> list[Message]:
    return [*system_turn(system), {"role": "user", "content": user}]


def render(
    tokenizer: PreTrainedTokenizerBase,
    conversation: list[Message],
    *,
    add_generation_prompt: bool = True,
) -> str:
    text = tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert isinstance(text, str)
    return text


def render_instructed(tokenizer: PreTrainedTokenizerBase, user: str, system: str) -> str:
    """``user`` under the system prompt ``system``; for templates that reject a system turn
    (e.g. Gemma's), the system text opens the user turn instead."""
    try:
        return render(tokenizer, messages(user, system))
    except TemplateError:
        return render(tokenizer, messages(f"{system}\n\n{user}"))


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    user: str,
    system: str | None = None,
    position: Literal["generation_prompt", "end_of_user"] = "generation_prompt",
) -> str:
    """The text whose last token is read: after the assistant header, or at the end of the
    user turn (the template's end-of-turn marker included)."""
    return render(
        tokenizer,
        messages(user, system),
        add_generation_prompt=position == "generation_prompt",
    )


def pre_query_template(tokenizer: PreTrainedTokenizerBase, system: str | None = None) -> str:
    """Everything the template emits before a user message's text (Magpie's pre-query
    template), including ``system`` or any system turn the template inserts by default.

    Found by rendering a conversation whose user text is a sentinel and cutting there, so
    it works for any template without knowing its markup.
    """
    text = render(tokenizer, messages(SENTINEL, system), add_generation_prompt=False)
    cut = text.find(SENTINEL)
    if cut < 0:
        raise ModelError(
            "the chat template does not echo the user's message; set "
            "synthesize.pre_query_template explicitly"
        )
    return text[:cut]


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end a turn: the template's marker right after a user message, and EOS."""
    text = render(tokenizer, messages(SENTINEL), add_generation_prompt=False)
    tail = text[text.find(SENTINEL) + len(SENTINEL) :]
    ids: list[int] = []
    if tail:
        first = tokenizer(tail, add_special_tokens=False)["input_ids"]
        if first and first[0] in set(tokenizer.all_special_ids):
            ids.append(int(first[0]))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids
