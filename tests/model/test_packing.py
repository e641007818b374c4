from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from icon2.model.packing import (
    Packing,
    PackingStats,
    common_prefix,
    pack_prefixes,
    packable,
    plan_packing,
    right_padded_lengths,
)

PAD = 0


def _model(attn: str = "sdpa", seed: int = 0) -> Any:
    torch.manual_seed(seed)
    settings: dict[str, Any] = {"attn_implementation": attn}
    config = LlamaConfig(
        **settings,
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as SmolLM2's
        max_position_embeddings=256,
    )
    model: Any = LlamaForCausalLM(config)
    return model.eval()


def _batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def _pairs() -> list[list[int]]:
    prompt_a, prompt_b = [5, 6, 7, 8, 9], [11, 12, 13]
    # chosen_1, chosen_2, rejected_1, rejected_2: pair 1 shares its prompt and one answer
    # token, pair 2 only its prompt; lengths differ, so every row but one is padded.
    return [
        [*prompt_a, 20, 21, 22],
        [*prompt_b, 30, 31, 32, 33, 34, 35],
        [*prompt_a, 20, 40],
        [*prompt_b, 50],
    ]


def test_right_padded_lengths() -> None:
    assert right_padded_lengths(torch.tensor([[1, 1, 0], [1, 1, 1]])) == [2, 3]
    assert right_padded_lengths(torch.tensor([[0, 1, 1], [1, 1, 1]])) is None  # left-padded
    assert right_padded_lengths(torch.tensor([[1, 0, 1]])) is None  # a hole
    assert right_padded_lengths(torch.tensor([[0, 0], [1, 1]])) is None  # an empty row


def test_common_prefix() -> None:
    assert common_prefix(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4, 5])) == 2
    assert common_prefix(torch.tensor([1, 2]), torch.tensor([1, 2, 3])) == 2
    assert common_prefix(torch.tensor([9]), torch.tensor([1])) == 0


def _check_plan(plan: Packing, ids: torch.Tensor, lengths: list[int]) -> None:
    """Every real position is placed once, on its own token and position id, and sees
    exactly the packed positions of its own row's earlier tokens."""
    width = ids.shape[1]
    dest, source = plan.dest.tolist(), plan.source.tolist()
    assert len(dest) == sum(lengths) == len(source) and len(set(dest)) == len(dest)
    assert torch.equal(ids.view(-1)[plan.dest], plan.input_ids.view(-1)[plan.source])
    assert torch.equal(plan.position_ids.view(-1)[plan.source], plan.dest % width)
    at = dict(zip(dest, source, strict=True))
    size = plan.input_ids.shape[1]
    for d, q in at.items():
        row, t = divmod(d, width)
        packed_row, local = divmod(q, size)
        visible = {
            packed_row * size + k for k in plan.mask[packed_row, local].nonzero()[:, 0].tolist()
        }
        assert visible == {at[row * width + u] for u in range(t + 1)}, (row, t)


def test_plan_shares_each_pairs_prefix_once() -> None:
    rows = _pairs()
    ids, mask = _batch(rows)
    lengths = right_padded_lengths(mask) or []
    plan = plan_packing(ids, lengths)
    # pair 1: 6 shared (prompt + token 20) + 2 + 1; pair 2: 3 shared + 6 + 1; one row
    assert plan.tokens == plan.packed_tokens == (6 + 2 + 1) + (3 + 6 + 1) == 19
    assert plan.input_ids.shape == (1, 19)
    _check_plan(plan, ids, lengths)
    # Narrow rows: each pair gets its own, the shorter one padded at its end.
    narrow = plan_packing(ids, lengths, width=8)
    assert narrow.input_ids.shape == (2, 10) and narrow.tokens == 19
    _check_plan(narrow, ids, lengths)
    assert narrow.mask[1, 9].tolist() == [False] * 9 + [True]  # padding sees itself only


def test_odd_rows_stand_alone() -> None:
    rows = _pairs()[:3]
    ids, mask = _batch(rows)
    lengths = right_padded_lengths(mask) or []
    plan = plan_packing(ids, lengths)
    assert plan.packed_tokens == sum(len(r) for r in rows)  # nothing shared, nothing padded
    _check_plan(plan, ids, lengths)


def _hidden(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
    hidden: torch.Tensor = out.last_hidden_state * mask[..., None]
    return hidden


@pytest.mark.parametrize("gqa_env", ["0", "1"])
def test_packed_states_and_gradients_equal_padded(
    gqa_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", gqa_env)
    ids, mask = _batch(_pairs())
    padded_model, packed_model = _model(), _model()
    stats = pack_prefixes(packed_model)
    assert isinstance(stats, PackingStats)
    want, got = _hidden(padded_model, ids, mask), _hidden(packed_model, ids, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert stats.packed_tokens == 19 and stats.padded_tokens == ids.numel() == 36
    weights = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    (want * weights).sum().backward()  # type: ignore[no-untyped-call]
    (got * weights).sum().backward()  # type: ignore[no-untyped-call]
    for (name, a), (_, b) in zip(
        padded_model.base_model.named_parameters(),
        packed_model.base_model.named_parameters(),
        strict=True,
    ):
        assert a.grad is not None and b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_a_row_sees_only_its_pair_prefix_and_itself() -> None:
    model = _model()
    pack_prefixes(model)
    rows = _pairs()
    ids, mask = _batch(rows)
    base = _hidden(model, ids, mask)
    changed = [list(r) for r in rows]
    changed[0][-1] = 60  # the last token of chosen_1's rest
    other = _hidden(model, *_batch(changed))
    assert not torch.allclose(other[0, len(rows[0]) - 1], base[0, len(rows[0]) - 1])
    torch.testing.assert_close(other[1:], base[1:], rtol=0, atol=0)  # rejected_1 included
    changed = [list(r) for r in rows]
    changed[2][0] = 61  # rejected_1's first prompt token: pair 1 now shares nothing
    other = _hidden(model, *_batch(changed))
    assert not torch.allclose(other[2], base[2])
    torch.testing.assert_close(other[0], base[0], rtol=1e-5, atol=1e-5)


def test_other_batches_run_the_backbones_own_forward() -> None:
    model = _model()
    stats = pack_prefixes(model)
    assert stats is not None
    ids, mask = _batch(_pairs())
    left = torch.flip(mask, dims=[1])
    model.base_model(input_ids=ids, attention_mask=left, use_cache=False)  # left-padded
    model.base_model(input_ids=ids, attention_mask=mask, use_cache=True)  # caching
    model.generate(input_ids=ids[:1, :5], max_new_tokens=3, do_sample=False)
    assert stats.padded_tokens == 0


def test_only_sdpa_models_and_installed_once() -> None:
    assert pack_prefixes(_model(attn="eager")) is None
    windowed = _model()
    windowed.config.sliding_window = 8  # the packed mask would replace the window
    assert not packable(windowed) and pack_prefixes(windowed) is None
    windowed.config.use_sliding_window = False  # Qwen2-style: a window set but unused
    assert packable(windowed)
    model = _model()
    first = pack_prefixes(model)
    assert pack_prefixes(model) is first


def test_a_deep_copy_runs_its_own_weights() -> None:
    model = _model()
    pack_prefixes(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    ids, mask = _batch(_pairs())
    assert not torch.allclose(_hidden(twin, ids, mask), _hidden(model, ids, mask))
    assert twin.base_model.forward.__self__ is twin.base_model
