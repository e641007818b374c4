from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch

from icon2.core.params import load_params
from icon2.core.tables import PAIR_SCHEMA
from icon2.engines.base import Generation, Sampling, Steering, SteeringInput, as_steering
from icon2.steps.direction_file import (
    CriterionDirections,
    DirectionFile,
    layer_scale,
    steering_groups,
)
from icon2.steps.pairs import generate_pairs, steer_pairs


def _dfile(d: int = 64, layers: int = 3) -> DirectionFile:
    crit = {}
    for i, name in enumerate(["honesty", "general"]):
        direction = torch.zeros(layers, d)
        direction[:, i] = 1.0
        crit[name] = CriterionDirections(
            direction=direction,
            evr=torch.full((layers,), 0.5),
            contrastive_norm=torch.tensor([1.0, 2.0, 3.0]) * (i + 1),
            hidden_norm=torch.tensor([10.0, 20.0, 30.0]),
            mean_projection=torch.ones(layers),
        )
    return DirectionFile(layers=[1, 2, 3], criteria=crit, meta={})


class FakeBackend:
    """Answers from a script keyed by (prompt, sign of the steering at layer 2, column 0/1)."""

    def __init__(self, answers: dict[str, tuple[Generation, Generation]]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], Steering]] = []

    def generate(
        self,
        prompts: Sequence[str],
        sampling: Sampling,
        *,
        vectors: SteeringInput | None = None,
        desc: str | None = None,
    ) -> list[Generation]:
        steering = as_steering(vectors, len(prompts))
        assert steering is not None
        self.calls.append((list(prompts), steering))
        out = []
        for i, p in enumerate(prompts):
            sign = float(steering.rows([i])[2].sum())
            out.append(self.answers[p][0 if sign > 0 else 1])
        return out


def _g(text: str, reason: str = "stop") -> Generation:
    return Generation(text, len(text.split()), reason)  # type: ignore[arg-type]


def test_steering_groups_scale_and_sign() -> None:
    d = _dfile()
    criteria = ["honesty", "general", "honesty", "honesty", "general"]
    gammas = [0.1, -0.05, 0.1, -0.05, -0.05]
    s = steering_groups(d, criteria, gammas, [2, 3], "contrastive_norm")
    # One group per (criterion, γ), in order of first appearance.
    assert s.groups == (0, 1, 0, 2, 1) and s.size == 3
    v = s.rows(range(5))
    torch.testing.assert_close(v[2][0, 0], torch.tensor(0.1 * 2.0))
    torch.testing.assert_close(v[3][1, 1], torch.tensor(-0.05 * 6.0))
    torch.testing.assert_close(v[2][3, 0], torch.tensor(-0.05 * 2.0))  # honesty pushed down
    assert float(v[2][0, 1]) == 0.0 and float(v[2][1, 0]) == 0.0
    assert layer_scale(d, "honesty", 3, "hidden_norm") == 30.0
    assert layer_scale(d, "honesty", 3, "unit") == 1.0


def test_generate_pairs_format_and_drops(tiny_model: Any) -> None:
    _, tok = tiny_model
    kept = pl.DataFrame(
        {
            "id": ["a", "b", "c", "d", "e"],
            "instruction": ["good", "same", "empty", "long", "fine"],
            "criterion": ["honesty", "general", "honesty", "general", "general"],
            "split": ["train", "train", "train", "validation", "validation"],
        }
    )
    from icon2.model.chat import render_prompt

    script = {
        "good": (_g("A kind answer."), _g("A rude answer.")),
        "same": (_g("Same."), _g("Same.")),
        "empty": (_g("Something."), _g("  ")),
        "long": (_g("Cut off", "length"), _g("Fine.")),
        "fine": (_g("Yes, gladly."), _g("No.")),
    }
    backend = FakeBackend({render_prompt(tok, k): v for k, v in script.items()})
    pairs, counts = generate_pairs(
        backend,
        tok,
        kept,
        _dfile(),
        gamma_pos=0.1,
        gamma_neg=-0.05,
        layers=[2, 3],
        scale="contrastive_norm",
        sampling=Sampling(),
    )
    assert len(backend.calls) == 1 and len(backend.calls[0][0]) == 10  # two passes each
    assert counts == {
        "identical": 1,
        "empty": 1,
        "truncated": 1,
        "instructions": 5,
        "pairs": 2,
        "train": 1,
        "validation": 1,
    }
    assert pairs.schema == pl.Schema(PAIR_SCHEMA)
    row = pairs.row(0, named=True)
    assert row["prompt"] == [{"role": "user", "content": "good"}]
    assert row["chosen"] == [{"role": "assistant", "content": "A kind answer."}]
    assert row["rejected"] == [{"role": "assistant", "content": "A rude answer."}]
    assert row["layers"] == [2, 3] and row["criterion"] == "honesty"
    assert pairs["split"].to_list() == ["train", "validation"]


def test_pairs_in_shards_equal_one_pass_and_build_vectors_per_shard(
    tiny_model: Any, tmp_path: Path
) -> None:
    _, tok = tiny_model
    from icon2.model.chat import render_prompt
    from icon2.steps.shards import ShardStore

    names = [f"q{i}" for i in range(5)]
    kept = pl.DataFrame(
        {
            "id": names,
            "instruction": names,
            "criterion": ["honesty", "general"] * 2 + ["honesty"],
            "split": ["train"] * 5,
        }
    )
    script = {n: (_g(f"{n} up."), _g(f"{n} down.")) for n in names}
    prompts = {render_prompt(tok, k): v for k, v in script.items()}
    settings: dict[str, Any] = {
        "gamma_pos": 0.1,
        "gamma_neg": -0.05,
        "layers": [2],
        "scale": "unit",
        "sampling": Sampling(),
    }
    whole, _ = generate_pairs(FakeBackend(prompts), tok, kept, _dfile(), **settings)
    backend = FakeBackend(prompts)
    store = ShardStore(tmp_path / "s", {"k": 1}, rows=5, size=2)
    sharded, counts = generate_pairs(
        backend, tok, kept, _dfile(), shard_size=2, store=store, **settings
    )
    assert sharded.equals(whole) and counts["pairs"] == 5
    # Each call holds one shard's two passes, with one vector per (criterion, sign) group.
    assert [len(p) for p, _ in backend.calls] == [4, 4, 2]
    assert [v.size for _, v in backend.calls] == [4, 4, 2]
    assert [v.groups for _, v in backend.calls] == [(0, 1, 2, 3), (0, 1, 2, 3), (0, 1)]
    firsts = [float(v.rows([0])[2].sum()) for _, v in backend.calls]
    lasts = [float(v.rows([len(p) - 1])[2].sum()) for p, v in backend.calls]
    assert firsts == pytest.approx([0.1] * 3) and lasts == pytest.approx([-0.05] * 3)
    # Rerun after a kill in the last shard: the finished shards are read, not regenerated.
    (store.path / "shard-000002.json").unlink()
    again = FakeBackend(prompts)
    store = ShardStore(tmp_path / "s", {"k": 1}, rows=5, size=2)
    resumed, _ = generate_pairs(again, tok, kept, _dfile(), shard_size=2, store=store, **settings)
    assert [p for p, _ in again.calls] == [[render_prompt(tok, "q4")] * 2]
    assert resumed.equals(whole)


def test_the_steering_the_engine_gets_does_not_grow_with_the_instructions(
    tiny_model: Any,
) -> None:
    """The vector path's memory: one [groups, d] table per layer, groups = criteria × signs."""
    _, tok = tiny_model
    from icon2.model.chat import render_prompt

    sizes = {}
    for n in (6, 600):
        names = [f"q{i}" for i in range(n)]
        kept = pl.DataFrame(
            {
                "id": names,
                "instruction": names,
                "criterion": ["honesty", "general"] * (n // 2),
                "split": ["train"] * n,
            }
        )
        script = {render_prompt(tok, k): (_g(f"{k} up."), _g(f"{k} down.")) for k in names}
        backend = FakeBackend(script)
        pairs, _ = generate_pairs(
            backend,
            tok,
            kept,
            _dfile(),
            gamma_pos=0.1,
            gamma_neg=-0.05,
            layers=[2, 3],
            scale="unit",
            sampling=Sampling(),
        )
        assert pairs.height == n  # every row got its own sign (chosen "up", rejected "down")
        assert pairs["chosen"].to_list()[-1][0]["content"] == f"q{n - 1} up."
        ((prompts, steering),) = backend.calls
        assert len(prompts) == 2 * n and len(steering.groups) == 2 * n
        sizes[n] = {layer: tuple(t.shape) for layer, t in steering.table.items()}
    assert sizes[6] == sizes[600] == {2: (4, 64), 3: (4, 64)}


def test_system_prompt_is_used_for_generation_and_kept_in_the_prompt(tiny_model: Any) -> None:
    _, tok = tiny_model
    from icon2.model.chat import render_prompt

    kept = pl.DataFrame(
        {"id": ["a"], "instruction": ["hi"], "criterion": ["honesty"], "split": ["train"]}
    )
    backend = FakeBackend({render_prompt(tok, "hi", "Be brief."): (_g("Hello!"), _g("Go."))})
    pairs, _ = generate_pairs(
        backend,
        tok,
        kept,
        _dfile(),
        gamma_pos=0.1,
        gamma_neg=-0.05,
        layers=[2],
        scale="unit",
        sampling=Sampling(),
        system="Be brief.",
    )
    assert pairs.row(0, named=True)["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


def test_steer_pairs_takes_the_pairs_section_and_meters_the_engine(
    tiny_model: Any,
    write_params: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    model, tok = tiny_model
    from icon2.model.chat import render_prompt

    p = load_params(write_params({"pairs": {"gamma_pos": 0.2, "gamma_neg": -0.1, "batch_size": 3}}))
    kept = pl.DataFrame(
        {
            "id": ["a", "b"],
            "instruction": ["good", "same"],
            "criterion": ["honesty", "general"],
            "split": ["train", "validation"],
        }
    )
    script = {
        "good": (_g("A kind answer."), _g("A rude answer.")),
        "same": (_g("Same."), _g("Same.")),
    }
    system = p.base.system_prompt
    backend = FakeBackend({render_prompt(tok, k, system): v for k, v in script.items()})
    made: dict[str, Any] = {}

    def make_backend(*args: Any, **kwargs: Any) -> FakeBackend:
        made.update(kwargs)
        return backend

    monkeypatch.setattr("icon2.engines.make_backend", make_backend)
    pairs, counts, meter = steer_pairs(p, tmp_path, model, tok, kept, _dfile(), [2, 3])
    assert made == {"batch_size": 3, "steering": True}
    assert counts["pairs"] == 1 and counts["identical"] == 1
    row = pairs.row(0, named=True)
    assert (row["gamma_pos"], row["gamma_neg"], row["layers"]) == (0.2, -0.1, [2, 3])
    assert row["gamma_scale"] == p.pairs.gamma_scale
    assert row["prompt"][0] == {"role": "system", "content": system}
    rec = meter.record()
    assert (rec.stage, rec.method, rec.category) == ("pairs", "icon2", "response generation")
    assert rec.tokens_generated == sum(g.token_count for pair in script.values() for g in pair)
    assert rec.tokens_read > 0
