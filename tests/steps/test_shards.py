"""Resumable shards: planning, seeds, keeping and reading shards, refusing another run's."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from icon2.core.cost import Meter
from icon2.core.errors import InputError
from icon2.engines.base import Generation, Sampling
from icon2.engines.metered import MeteredBackend
from icon2.steps.shards import (
    SEED_STRIDE,
    Shard,
    ShardStore,
    plan_shards,
    run_shards,
    shard_dir_for,
    shard_key,
    shard_sampling,
)
from icon2.steps.synthesis import synthesize


class SeedEcho:
    """Answers each prompt with its text, the request's seed and its row in the call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []  # (rows, seed)

    def generate(
        self,
        prompts: Sequence[str],
        sampling: Sampling,
        *,
        vectors: Mapping[int, torch.Tensor] | None = None,
        desc: str | None = None,
    ) -> list[Generation]:
        self.calls.append((len(prompts), sampling.seed))
        return [Generation(f"{p}|{sampling.seed}|{i}", 3, "stop") for i, p in enumerate(prompts)]


class Tokens:
    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [0] * len(text.split())}


def _store(tmp_path: Path, key: dict[str, object] | None = None, rows: int = 7) -> ShardStore:
    return ShardStore(tmp_path / "shards", key or {"params": 1}, rows=rows, size=3)


def _work(backend: Any, prompts: list[str]) -> Callable[[Shard], list[Generation]]:
    def work(shard: Shard) -> list[Generation]:
        sampling = shard_sampling(Sampling(seed=5), shard)
        return backend.generate(prompts[shard.start : shard.stop], sampling)

    return work


def test_plan_covers_every_row_once() -> None:
    shards = plan_shards(7, 3)
    assert [(s.index, s.start, s.stop) for s in shards] == [(0, 0, 3), (1, 3, 6), (2, 6, 7)]
    assert plan_shards(3, 10) == [Shard(0, 0, 3)]
    with pytest.raises(ValueError, match="shard size must be >= 1"):
        plan_shards(3, 0)


def test_shard_seeds_keep_shard_zero_and_differ_after() -> None:
    s = Sampling(seed=11, temperature=1.0)
    assert shard_sampling(s, Shard(0, 0, 4)) == s  # one shard decodes as without shards
    assert shard_sampling(s, Shard(2, 8, 12)).seed == 11 + 2 * SEED_STRIDE
    assert shard_sampling(s, Shard(2, 8, 12)).temperature == 1.0


def test_shard_dir_sits_beside_the_output() -> None:
    assert shard_dir_for(Path("data/pairs/pairs.parquet")) == Path("data/pairs/.shards/pairs")


def test_a_rerun_reads_finished_shards_and_counts_their_cost(tmp_path: Path) -> None:
    prompts = [f"p{i}" for i in range(7)]
    shards = plan_shards(7, 3)
    first, meter1 = SeedEcho(), Meter("s", "m", "response generation", device_kind="cpu")
    metered1 = MeteredBackend(first, meter1, Tokens())
    store = _store(tmp_path)
    out1 = run_shards(shards, _work(metered1, prompts), store=store, meter=meter1)
    assert [rows for rows, _ in first.calls] == [3, 3, 1]
    assert [seed for _, seed in first.calls] == [5, 5 + SEED_STRIDE, 5 + 2 * SEED_STRIDE]
    assert sorted(p.name for p in store.path.iterdir()) == [
        "manifest.json",
        "shard-000000.json",
        "shard-000001.json",
        "shard-000002.json",
    ]
    # A killed run: shard 1 never finished.
    (store.path / "shard-000001.json").unlink()
    again, meter2 = SeedEcho(), Meter("s", "m", "response generation", device_kind="cpu")
    metered2 = MeteredBackend(again, meter2, Tokens())
    out2 = run_shards(shards, _work(metered2, prompts), store=_store(tmp_path), meter=meter2)
    assert again.calls == [(3, 5 + SEED_STRIDE)]  # only the missing shard is generated
    assert out2 == out1
    # Tokens of the read shards are added back: the meter holds the whole job.
    assert meter2.tokens_generated == meter1.tokens_generated == 21
    assert meter2.tokens_read == meter1.tokens_read == 7


def test_another_runs_shards_are_refused_and_left_alone(tmp_path: Path) -> None:
    prompts = [f"p{i}" for i in range(7)]
    run_shards(plan_shards(7, 3), _work(SeedEcho(), prompts), store=_store(tmp_path))
    before = {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()}
    backend = SeedEcho()
    for other in (_store(tmp_path, {"params": 2}), _store(tmp_path, rows=8)):
        with pytest.raises(InputError, match=r"shards of another run .* never mixed in"):
            run_shards(plan_shards(7, 3), _work(backend, prompts), store=other)
    assert backend.calls == []
    assert {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()} == before


def test_a_foreign_directory_or_a_damaged_shard_is_one_error(tmp_path: Path) -> None:
    prompts = [f"p{i}" for i in range(7)]
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "notes.txt").write_text("mine\n")
    with pytest.raises(InputError, match=r"without manifest.json; it is not this stage's"):
        run_shards(plan_shards(7, 3), _work(SeedEcho(), prompts), store=_store(tmp_path))
    (tmp_path / "shards" / "notes.txt").unlink()
    store = _store(tmp_path)
    run_shards(plan_shards(7, 3), _work(SeedEcho(), prompts), store=store)
    (store.path / "shard-000002.json").write_text("{not json")
    with pytest.raises(InputError, match=r"shard-000002.json: not a readable shard"):
        run_shards(plan_shards(7, 3), _work(SeedEcho(), prompts), store=_store(tmp_path))
    moved = json.loads((store.path / "shard-000000.json").read_text())
    moved.update(start=3, stop=6)
    (store.path / "shard-000002.json").write_text(json.dumps(moved))
    with pytest.raises(InputError, match=r"holds rows other than 6..6"):
        run_shards(plan_shards(7, 3), _work(SeedEcho(), prompts), store=_store(tmp_path))


def test_a_shard_with_the_wrong_number_of_generations_is_refused(tmp_path: Path) -> None:
    backend = SeedEcho()

    def work(shard: Shard) -> list[Generation]:
        return backend.generate(["x"] * (shard.rows + 1), Sampling())

    with pytest.raises(RuntimeError, match="shard 0 made 4 generations, expected 3"):
        run_shards(plan_shards(7, 3), work, store=_store(tmp_path))
    assert not list((tmp_path / "shards").glob("shard-*.json"))  # a bad shard is never kept


def test_remove_deletes_only_what_the_store_wrote(tmp_path: Path) -> None:
    prompts = [f"p{i}" for i in range(7)]
    store = _store(tmp_path)
    run_shards(plan_shards(7, 3), _work(SeedEcho(), prompts), store=store)
    store.remove()
    assert not store.path.exists()
    store = _store(tmp_path)
    run_shards(plan_shards(7, 3), _work(SeedEcho(), prompts), store=store)
    (store.path / "keep.txt").write_text("a user's file\n")
    store.remove()
    assert sorted(p.name for p in store.path.iterdir()) == ["keep.txt"]


def test_synthesis_in_shards_resumes_to_the_same_table(tmp_path: Path) -> None:
    whole = synthesize(SeedEcho(), "PRE", 7, Sampling(seed=5), shard_size=3)
    assert whole["seed"].to_list() == [5] * 3 + [5 + SEED_STRIDE] * 3 + [5 + 2 * SEED_STRIDE]
    store = ShardStore(tmp_path / "s", {"k": 1}, rows=7, size=3)
    first = synthesize(SeedEcho(), "PRE", 7, Sampling(seed=5), shard_size=3, store=store)
    (store.path / "shard-000002.json").unlink()
    backend = SeedEcho()
    store = ShardStore(tmp_path / "s", {"k": 1}, rows=7, size=3)
    resumed = synthesize(backend, "PRE", 7, Sampling(seed=5), shard_size=3, store=store)
    assert backend.calls == [(1, 5 + 2 * SEED_STRIDE)]
    assert resumed.equals(first) and resumed.equals(whole)
    # One shard: the seeds (and so the samples) of a run without shards.
    assert synthesize(SeedEcho(), "PRE", 7, Sampling(seed=5))["seed"].to_list() == [5] * 7


def test_the_key_holds_the_code_and_drops_settings_applied_after_generation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from icon2.steps import shards

    record = {
        "stage": "synthesize",
        "params": {"base.seed": 0, "synthesize": {"count": 8, "min_chars": 12, "max_chars": 40}},
    }
    key = shard_key(record, "synthesize")
    assert key["params"]["synthesize"] == {"count": 8}  # cleaning rules: not the samples'
    assert set(key["code"]) == {"icon2_sources", "torch", "transformers", "vllm"}
    looser = {**record, "params": {**record["params"], "synthesize": {"count": 8, "min_chars": 1}}}
    assert shard_key(looser, "synthesize") == key
    more = {**record, "params": {**record["params"], "synthesize": {"count": 9}}}
    assert shard_key(more, "synthesize") != key
    monkeypatch.setattr(shards, "code_fingerprint", lambda: {"icon2_sources": "other"})
    assert shard_key(record, "synthesize") != key  # other code: its shards are not mixed in


def test_a_killed_first_manifest_write_is_not_a_foreign_folder(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.path.mkdir(parents=True)
    (store.path / ".manifest.json.tmp-123-abcd").write_text("{")
    assert store.open() == 0 and (store.path / "manifest.json").is_file()
