from __future__ import annotations

from typing import Any

from icon2.model.chat import end_of_turn_ids, pre_query_template, render_prompt
from tests.tiny import build_tokenizer

# SmolLM2-135M-Instruct's template (ChatML with a default system turn), as in its GGUF.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _chatml_tokenizer() -> Any:
    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = SMOLLM2_TEMPLATE
    return tok


def test_pre_query_template_chatml_keeps_default_system_turn() -> None:
    tok = _chatml_tokenizer()
    assert pre_query_template(tok) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\n"
    )
    assert pre_query_template(tok, "Be honest.") == (
        "<|im_start|>system\nBe honest.<|im_end|>\n<|im_start|>user\n"
    )
    assert end_of_turn_ids(tok) == [tok.convert_tokens_to_ids("<|im_end|>")]


def test_pre_query_template_tiny(tiny_model: Any) -> None:
    _, tok = tiny_model
    assert pre_query_template(tok) == "<|bos|><|user|>"
    assert end_of_turn_ids(tok) == [tok.convert_tokens_to_ids("<|eot|>")]
    text = render_prompt(tok, "Hi", "Sys")
    assert text == "<|bos|><|system|>Sys<|eot|><|user|>Hi<|eot|><|assistant|>"
    assert render_prompt(tok, "Hi", position="end_of_user") == "<|bos|><|user|>Hi<|eot|>"
