from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from icon2.evaluate.leakage import (
    embedding_leakage,
    ngram_leakage,
    normalise_words,
    offending_prompts,
    pair_texts,
    summarize,
)

VOCAB = [f"w{i}" for i in range(6)]  # a small vocabulary makes chance overlaps common


def _brute_force(prompts: list[str], training: list[str], n: int) -> list[int]:
    """Shared distinct n-grams per prompt by comparing every window with every window."""
    counts = []
    for p in prompts:
        pw = normalise_words(p)
        shared = set()
        for i in range(len(pw) - n + 1):
            for t in training:
                tw = normalise_words(t)
                for j in range(len(tw) - n + 1):
                    if pw[i : i + n] == tw[j : j + n]:
                        shared.add(tuple(pw[i : i + n]))
        counts.append(len(shared))
    return counts


def test_normalisation_ignores_case_punctuation_and_spacing() -> None:
    assert normalise_words("Hello,  WORLD!\tIt's_fine ") == ["hello", "world", "it", "s", "fine"]
    assert normalise_words("ｆｕｌｌ width") == ["full", "width"]  # NFKC


@pytest.mark.parametrize(("n", "vocab"), [(1, 6), (3, 6), (5, 2)])
def test_matches_brute_force_count(n: int, vocab: int) -> None:
    rng = np.random.default_rng(n)
    words = VOCAB[:vocab]
    prompts = [" ".join(rng.choice(words, size=rng.integers(0, 12))) for _ in range(25)]
    training = [" ".join(rng.choice(words, size=rng.integers(0, 15))) for _ in range(15)]
    table = ngram_leakage(prompts, training, n=n)
    expected = _brute_force(prompts, training, n)
    assert table["shared_ngrams"].to_list() == expected
    assert table["leaked"].to_list() == [c > 0 for c in expected]
    assert 0 < sum(c > 0 for c in expected) < len(prompts)  # the case tests both outcomes


def test_thirteen_gram_planted_in_a_response_is_found_and_listed() -> None:
    secret = "the quick brown fox jumps over the lazy dog near the quiet river bank"
    prompts = [
        "Tell me: THE quick brown fox jumps over the lazy dog, near the quiet river!",
        "the quick brown fox jumps over the lazy dog near the quiet",  # 12 words
        "an unrelated prompt about cooking a soup for the whole village tonight, ok?",
    ]
    training = ["nothing here", f"Sure. {secret}."]
    table = ngram_leakage(prompts, training)
    assert table["leaked"].to_list() == [True, False, False]
    assert table["too_short"].to_list() == [False, True, False]
    assert table["train_index"].to_list() == [1, None, None]
    assert (
        table["example_ngram"][0]
        == "the quick brown fox jumps over the lazy dog near the quiet river"
    )
    s = summarize(table)
    assert s["ngram_leaked"] == 1 and s["ngram_leaked_share"] == pytest.approx(1 / 3)
    assert s["too_short"] == 1


def test_training_iterable_is_read_once() -> None:
    table = ngram_leakage(["a b c"], iter(["x a b c y"]), n=3)
    assert table["leaked"].to_list() == [True]


def test_bad_n_and_empty_prompts() -> None:
    with pytest.raises(ValueError, match="n must be"):
        ngram_leakage(["a"], ["a"], n=0)
    assert ngram_leakage([], ["a b"]).height == 0


def _unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def test_embedding_similarity_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    prompts = rng.normal(size=(7, 5))
    train = rng.normal(size=(11, 5)) * rng.uniform(0.5, 3, size=(11, 1))  # not unit rows
    train[4] = prompts[2] * 2.0  # a paraphrase: same direction
    table = embedding_leakage(prompts, train, threshold=0.99, chunk=3)
    sims = _unit(prompts) @ _unit(train).T
    np.testing.assert_allclose(table["max_cosine"].to_numpy(), sims.max(axis=1))
    assert table["train_index"].to_list() == sims.argmax(axis=1).tolist()
    assert table["flagged"].to_list() == [i == 2 for i in range(7)]
    s = summarize(ngram_leakage(["x"] * 7, ["y"]), table)
    assert s["embedding_flagged"] == 1 and s["embedding_max_cosine_max"] == pytest.approx(1.0)


def test_embedding_bad_input() -> None:
    with pytest.raises(ValueError, match="dim"):
        embedding_leakage(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="no training"):
        embedding_leakage(np.zeros((2, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="threshold"):
        embedding_leakage(np.ones((1, 3)), np.ones((1, 3)), threshold=2.0)


def test_pair_texts_takes_user_turns_and_responses() -> None:
    msg = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    pairs = pl.DataFrame(
        {
            "prompt": [[{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}]],
            "chosen": [[{"role": "assistant", "content": "good"}]],
            "rejected": [[{"role": "assistant", "content": "bad"}]],
        },
        schema={"prompt": msg, "chosen": msg, "rejected": msg},
    )
    assert pair_texts(pairs) == ["q", "good", "bad"]


def test_offending_prompts_lists_the_flagged_rows() -> None:
    training = ["a b c d", "x y z"]
    prompts = ["a b c", "q r s", "x y z w"]
    grams = ngram_leakage(prompts, training, n=3)
    only = offending_prompts(grams, None, training)
    assert only["prompt"].to_list() == ["a b c", "x y z w"]
    assert only["prompt_index"].to_list() == [0, 2] and "max_cosine" not in only.columns
    # Embeddings also flag prompt 1 (a near copy of training text 1), and name its neighbour.
    emb = embedding_leakage(
        np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
        np.array([[1.0, 0.1], [0.1, 1.0]]),
        threshold=0.99,
    )
    both = offending_prompts(grams, emb, training)
    assert both["prompt_index"].to_list() == [0, 1, 2]  # leaked or flagged
    assert both["nearest_training_text"].to_list() == ["a b c d", "x y z", "a b c d"]
    assert both["embedding_flagged"].to_list() == [True, True, False]
    assert both["leaked"].to_list() == [True, False, True]
    assert offending_prompts(grams.head(0), emb.head(0), training).height == 0
