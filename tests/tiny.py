"""Tiny random chat models built fully offline, for tests and smoke runs.

A byte-level BPE tokenizer trained with ``tokenizers`` on a small built-in corpus, a Jinja
chat template that differs from ChatML (no default system turn), and a 2–4 layer Llama
whose head size is 32 (vLLM's CPU build needs head sizes it has kernels for).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<|pad|>", "<|bos|>", "<|eot|>", "<|system|>", "<|user|>", "<|assistant|>"]
TINY_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>' + m['content'] + '<|eot|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
_CORPUS = [
    "You are an honest assistant. You are a dishonest assistant.",
    "You are a helpful assistant. You are a helpless assistant. Be harmless, not harmful.",
    "How do I sort a list in Python? Use the sorted function or list.sort().",
    "What is the capital of France? Paris is the capital of France.",
    "Write a short poem about the sea and the wind and the light of the morning.",
    "Explain why the sky is blue: sunlight scatters off molecules in the air.",
    "Give me three tips for sleeping better: keep a schedule, avoid screens, rest.",
    "Solve 12 * 7 + 3. The answer is 87. Numbers 0 1 2 3 4 5 6 7 8 9.",
    "Tell me a story about a dragon who learned to cook soup for the village.",
    "Is it safe to mix bleach and ammonia? No, it makes toxic gas; never do it.",
]


def build_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eot|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    fast.chat_template = TINY_TEMPLATE
    return fast


def build_tiny_model(
    out_dir: Path,
    *,
    num_layers: int = 2,
    hidden_size: int = 64,
    seed: int = 0,
    chat_template: str | None = TINY_TEMPLATE,
    eot_scale: float = 6.0,
) -> Path:
    """Write a random tiny Llama chat model (weights + tokenizer) to ``out_dir``."""
    tokenizer = build_tokenizer()
    tokenizer.chat_template = chat_template
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // 32,
        num_key_value_heads=hidden_size // 32,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Larger than default init so that random weights give hidden states with structure
    # the tests can see (directions, steering effects) instead of near-uniform noise.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
        # A long end-of-turn row makes the random model end turns now and then, so tests
        # of stop handling, truncation and pair filtering see both outcomes.
        model.lm_head.weight[tokenizer.eos_token_id] *= eot_scale
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
