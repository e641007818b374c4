"""Tests for icon2.train.data: preference tables through the trainer's own tokenization."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from icon2.core.params import TrainParams
from icon2.core.tables import SPA_PAIR_SCHEMA
from icon2.train.config import make_trainer
from icon2.train.data import to_datasets

# (chosen_finish, rejected_finish) per row: both ended, both truncated, one of each.
FINISH = [("stop", "stop"), ("length", "length"), ("length", "stop"), ("stop", "length")]
FLAGS = ("chosen_truncated", "rejected_truncated")  # to_datasets' flag columns


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _table() -> pl.DataFrame:
    rows = [
        {
            "split": "train",
            "prompt": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"Tell me a story about a dragon, part {i}."},
            ],
            "chosen": [{"role": "assistant", "content": "A dragon learned to cook soup for"}],
            "rejected": [{"role": "assistant", "content": "The sea and the wind and the"}],
            "reward_chosen": 1.0,
            "reward_rejected": 0.0,
            "chosen_finish": chosen,
            "rejected_finish": rejected,
        }
        for i, (chosen, rejected) in enumerate(FINISH)
    ]
    return pl.DataFrame(rows, schema=SPA_PAIR_SCHEMA)


def _prepared(model_dir: Path, tmp_path: Path, loss: str, table: pl.DataFrame) -> Any:
    """The trainer ``make_trainer`` builds for these pairs; its train_dataset is tokenized."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    policy, ref = (AutoModelForCausalLM.from_pretrained(model_dir) for _ in range(2))
    tp = TrainParams.model_validate({"loss": loss, "max_steps": 1, "precision": "fp32"})
    train, _ = to_datasets(table, where="test pairs")
    return make_trainer(
        tp,
        model=policy,
        ref_model=ref,
        tokenizer=tok,
        train_dataset=train,
        eval_dataset=None,
        output_dir=tmp_path / "out",
        seed=0,
    )


@pytest.mark.parametrize("loss", ["dpo", "spa", "dro"])
def test_truncated_answers_train_without_end_of_turn(
    tiny_model_dir: Path, tmp_path: Path, loss: str
) -> None:
    trainer = _prepared(tiny_model_dir, tmp_path, loss, _table())
    eot = trainer.processing_class.convert_tokens_to_ids("<|eot|>")
    data = trainer.train_dataset
    for i, finish in enumerate(FINISH):
        for side, reason in zip(("chosen", "rejected"), finish, strict=True):
            ids = data[i][f"{side}_ids"]
            # Known answer: the tiny template closes an ended answer with <|eot|>, and only then.
            assert (ids[-1] == eot) == (reason == "stop"), (i, side, reason, ids)
    assert trainer.truncated_answers == 4


def test_ended_answers_keep_trl_tokenization(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Ended answers are byte-identical to TRL's own tokenization (no flag columns), and a
    truncated answer is exactly TRL's ids less the closing end-of-turn token."""
    table = _table()
    ours = _prepared(tiny_model_dir, tmp_path / "a", "dpo", table).train_dataset
    trl = _prepared(
        tiny_model_dir, tmp_path / "b", "dpo", table.drop("chosen_finish", "rejected_finish")
    ).train_dataset
    assert not any(any(trl[c]) for c in FLAGS)
    for i, finish in enumerate(FINISH):
        assert ours[i]["prompt_ids"] == trl[i]["prompt_ids"]
        for side, reason in zip(("chosen", "rejected"), finish, strict=True):
            want = trl[i][f"{side}_ids"] if reason == "stop" else trl[i][f"{side}_ids"][:-1]
            assert ours[i][f"{side}_ids"] == want, (i, side)


def test_to_datasets_flags_length_finishes_only() -> None:
    table = _table().with_columns(
        pl.when(pl.int_range(pl.len()) == 0)
        .then(None)
        .otherwise(pl.col("rejected_finish"))
        .alias("rejected_finish")
    )
    train, val = to_datasets(table)
    assert val is None
    assert train[FLAGS[0]] == [f[0] == "length" for f in FINISH]
    assert train[FLAGS[1]] == [False, True, False, True]  # null = ended
    plain, _ = to_datasets(table.drop("chosen_finish", "rejected_finish"))
    assert not any(plain[FLAGS[0]]) and not any(plain[FLAGS[1]])
