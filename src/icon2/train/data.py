"""Preference tables → TRL datasets, and the checks model and data must pass first.

A truncated answer (the token budget cut it) did not end its turn, so it is trained without
the end-of-turn token that TRL's chat-template rendering appends to every conversational
answer: :func:`to_datasets` carries a ``<side>_truncated`` flag per answer, and the trainer
re-tokenizes the flagged answers with :func:`tokenize_truncated` after TRL's own tokenization.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import polars as pl
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from trl.data_utils import common_prefix_length

from icon2.core.errors import InputError, ModelError
from icon2.core.tables import MESSAGE_COLUMNS

SIDES = ("chosen", "rejected")
# One flag per answer: True when its finish reason is "length" (it did not end its turn).
TRUNCATED = {side: f"{side}_truncated" for side in SIDES}


def to_datasets(
    frame: pl.DataFrame, where: str = "the preference table"
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(train, validation or None) in TRL's conversational preference format.

    Input columns: split, prompt, chosen, rejected; optional chosen_finish, rejected_finish
    ("stop" | "length"). Output columns: prompt, chosen, rejected, chosen_truncated,
    rejected_truncated (False where the table has no finish column or a null in it).
    """
    flags = [
        (pl.col(f"{side}_finish") == "length").fill_null(False)
        if f"{side}_finish" in frame.columns
        else pl.lit(False)
        for side in SIDES
    ]
    frame = frame.with_columns(
        flag.alias(TRUNCATED[side]) for side, flag in zip(SIDES, flags, strict=True)
    )

    def part(name: str) -> datasets.Dataset | None:
        rows = frame.filter(pl.col("split") == name).select(*MESSAGE_COLUMNS, *TRUNCATED.values())
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


def tokenize_truncated(dataset: Any, tokenizer: Any) -> Any:
    """TRL's tokenized pairs with every truncated answer re-tokenized without end-of-turn.

    TRL tokenizes a conversational answer as ``template(prompt + [answer])`` and keeps what
    follows the prompt, so every answer ends with the template's end-of-turn markup. A
    flagged answer is rendered instead with ``continue_final_message=True`` (the template's
    text cut right after the answer), and the completion split follows TRL's rule (after the
    common prefix of the prompt's and both sequences' ids). Rows without a flagged answer,
    and datasets without the flag columns, keep TRL's ids unchanged.

    Args:
        dataset: TRL's prepared dataset (columns prompt, chosen, rejected, prompt_ids,
            chosen_ids, rejected_ids, and the ``TRUNCATED`` flags when present).
        tokenizer: The tokenizer (or processor) TRL tokenized with.

    Returns:
        The dataset with the same columns.
    """
    if not isinstance(dataset, datasets.Dataset) or not set(TRUNCATED.values()) <= set(
        dataset.column_names
    ):
        return dataset
    if truncated_count(dataset) == 0:
        return dataset
    return dataset.map(
        _open_row, fn_kwargs={"tokenizer": tokenizer}, desc="Truncated answers without EOT"
    )


def _open_row(example: dict[str, Any], tokenizer: Any) -> dict[str, list[int]]:
    prompt_ids: list[int] = example["prompt_ids"]
    full: dict[str, list[int]] = {}
    for side in SIDES:
        if example[TRUNCATED[side]]:
            full[side] = tokenizer.apply_chat_template(
                example["prompt"] + example[side],
                tokenize=True,
                return_dict=True,
                continue_final_message=True,
            )["input_ids"]
        else:
            full[side] = prompt_ids + example[f"{side}_ids"]
    cut = min(common_prefix_length(prompt_ids, ids) for ids in full.values())
    return {"prompt_ids": prompt_ids[:cut], **{f"{s}_ids": full[s][cut:] for s in SIDES}}


def truncated_count(dataset: Any) -> int:
    """How many answers of ``dataset`` are flagged truncated (0 without the flag columns)."""
    if not isinstance(dataset, datasets.Dataset):
        return 0
    return sum(sum(dataset[col]) for col in TRUNCATED.values() if col in dataset.column_names)
