"""Preference tables → TRL datasets, and the checks model and data must pass first."""

from __future__ import annotations

from pathlib import Path

import datasets
import polars as pl
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.errors import InputError, ModelError
from icon2.core.tables import MESSAGE_COLUMNS


def to_datasets(
    frame: pl.DataFrame, where: str = "the preference table"
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(train, validation or None) in TRL's conversational preference format."""

    def part(name: str) -> datasets.Dataset | None:
        rows = frame.filter(pl.col("split") == name).select(MESSAGE_COLUMNS)
        return datasets.Dataset.from_list(rows.to_dicts()) if rows.height else None

    train = part("train")
    if train is None:
        raise InputError(
            f"{where}: no rows in the train split ({frame.height} rows in all); "
            f"training needs at least one pair with split = 'train'"
        )
    return train, part("validation")


def check_tokenizer(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, model_dir: Path
) -> None:
    """Refuse a tokenizer whose vocabulary is larger than the model's embedding."""
    vocab = int(model.config.vocab_size)
    size = len(tokenizer)
    if size > vocab:
        raise ModelError(
            f"{model_dir}: the tokenizer has {size} tokens but the model's embedding has "
            f"{vocab}; they do not belong together"
        )
