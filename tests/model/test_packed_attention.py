from __future__ import annotations

from typing import Any

import pytest
import torch

from icon2.model import packed_attention
from icon2.model.packed_attention import Call, RowCalls, group_calls, split_attention
from icon2.model.packing import Packing, pack_prefixes, plan_packing, right_padded_lengths
from tests.model.test_packing import _batch, _hidden, _model, _pairs


def test_group_calls() -> None:
    # prefix at 0 (3 positions), answers at 3 (2) and 5 (4)
    assert group_calls(0, 3, [(3, 2), (5, 4)]) == [Call(((0, 5),), 0), Call(((0, 3), (5, 4)), 3)]
    assert group_calls(7, 0, [(7, 2), (9, 4)]) == [Call(((7, 2),), 0), Call(((9, 4),), 0)]
    assert group_calls(0, 3, [(3, 0), (3, 1)]) == [Call(((0, 3),), 0), Call(((0, 3), (3, 1)), 3)]
    assert group_calls(0, 3, [(3, 2), (5, 0)]) == [Call(((0, 5),), 0)]  # nothing of its own
    assert group_calls(4, 0, [(4, 6)]) == [Call(((4, 6),), 0)]  # a lone row


def _plan(width: int, odd: bool = False) -> Packing:
    c1, c2, r1, r2 = _pairs()
    # Two more pairs: a chosen answer that is the start of its rejected one, and the reverse.
    c3, r3 = [5, 6, 7, 8, 9, 20], [5, 6, 7, 8, 9, 20, 21]
    c4, r4 = [11, 12, 13, 14], [11, 12, 13]
    c5, r5 = [70, 71, 72], [80, 81]  # nothing shared
    rows = [c1, c2, c3, c4, c5, r1, r2, r3, r4, r5]
    if odd:
        rows = rows[:-1]  # every row a group of its own
    ids, mask = _batch(rows)
    return plan_packing(ids, right_padded_lengths(mask) or [], width=width)


def _qkv(plan: Packing) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    rows, size = plan.input_ids.shape
    return [torch.randn(rows, 3, size, 8, generator=g) for _ in range(3)]


def _masked(
    plan: Packing, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=plan.mask[:, None], scale=scale
    )


@pytest.mark.parametrize(
    ("width", "odd", "scale"), [(1024, False, None), (8, False, 0.3), (1024, True, 0.3)]
)
def test_split_attention_gives_what_the_packed_mask_allows(
    width: int, odd: bool, scale: float | None
) -> None:
    plan = _plan(width, odd)
    q, k, v = _qkv(plan)
    want, got = _masked(plan, q, k, v, scale), split_attention(q, k, v, plan.calls, scale)
    assert got.shape == want.shape and len(plan.calls) == plan.input_ids.shape[0]
    for row, calls in enumerate(plan.calls):
        torch.testing.assert_close(got[row, :, : calls.size], want[row, :, : calls.size])
        assert not got[row, :, calls.size :].any()  # padding: zeros


def test_a_call_that_reads_the_other_answer_is_caught() -> None:
    plan = _plan(1024)
    q, k, v = _qkv(plan)
    first = plan.calls[0]
    # The second answer's call reading prefix + first answer + itself: what the mask forbids.
    (start, shared), (rest, length) = first.calls[1].spans
    wrong = Call(((start, rest - start + length),), rest - start)
    bad = (RowCalls((first.calls[0], wrong, *first.calls[2:]), first.size), *plan.calls[1:])
    got = split_attention(q, k, v, bad, None)
    own = slice(rest, rest + length)
    assert shared > 0 and not torch.allclose(got[0, :, own], _masked(plan, q, k, v)[0, :, own])


def test_the_packed_backbone_runs_split_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = packed_attention.split_attention

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(packed_attention, "split_attention", spy)
    model = _model()
    pack_prefixes(model)
    ids, mask = _batch(_pairs())
    _hidden(model, ids, mask)
    assert len(calls) == model.config.num_hidden_layers
    model.base_model(input_ids=ids, attention_mask=torch.flip(mask, dims=[1]), use_cache=False)
    assert len(calls) == model.config.num_hidden_layers  # not packed: transformers' sdpa


def test_dropout_and_foreign_calls_take_the_previous_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    pack_prefixes(model)
    plan = _plan(1024)
    q, k, v = _qkv(plan)
    module: Any = model.base_model.layers[0].self_attn
    module.num_key_value_groups = 1
    kw = {packed_attention.KWARG: plan.calls}
    mask = plan.mask[:, None]
    split, _ = packed_attention.packed_sdpa(module, q, k, v, mask, **kw)
    plain, _ = packed_attention.packed_sdpa(module, q, k, v, mask)
    size = plan.calls[0].size
    torch.testing.assert_close(split[:, :size], plain[:, :size])
    torch.manual_seed(0)
    dropped, _ = packed_attention.packed_sdpa(module, q, k, v, mask, dropout=0.5, **kw)
    torch.manual_seed(0)
    want, _ = packed_attention.packed_sdpa(module, q, k, v, mask, dropout=0.5)
    torch.testing.assert_close(dropped, want)
    scaled, _ = packed_attention.packed_sdpa(module, q, k, v, mask, scaling=0.3, **kw)
    want = _masked(plan, q, k, v, 0.3).transpose(1, 2)
    torch.testing.assert_close(scaled[:, :size], want[:, :size])
    taken: list[dict[str, Any]] = []
    monkeypatch.setattr(packed_attention, "_previous", [lambda *a, **kwargs: taken.append(kwargs)])
    for name, value in [("sliding_window", 4), ("softcap", 30.0), ("is_causal", False)]:
        packed_attention.packed_sdpa(module, q, k, v, mask, **kw, **{name: value})
        assert taken[-1][name] == value and packed_attention.KWARG not in taken[-1], name
    assert len(taken) == 3
    monkeypatch.undo()
    two_rows = {packed_attention.KWARG: plan.calls * 2}  # not this batch's rows
    odd, _ = packed_attention.packed_sdpa(module, q, k, v, mask, **two_rows)
    torch.testing.assert_close(odd, plain)
