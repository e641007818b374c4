"""Make data/benchmarks/hh_rlhf_300.jsonl from Anthropic's HH-RLHF test split (MIT licence).

    git clone https://github.com/anthropics/hh-rlhf   # harmless-base/test.jsonl.gz
    python benchmarks/make_hh_rlhf.py hh-rlhf/harmless-base/test.jsonl.gz \\
        data/benchmarks/hh_rlhf_300.jsonl

Each source row is a pair of whole dialogues, ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``,
that differ in the last assistant turn. A row becomes one pair in TRL's conversational
preference format (``prompt`` = the turns before the last answer, ``chosen`` / ``rejected``
= that answer as one assistant message) when both dialogues parse into alternating user /
assistant turns that start with the user and end with the assistant, share every turn
before the last, and end in two different non-empty answers; and when the prompt and both
answers together are short (``--max-words`` whitespace words, ``--max-chars`` characters)
so that a small model on a CPU scores the set in minutes. The eligible rows are ordered
by the SHA-256 of their source line and the first ``--pairs`` kept: a fixed pseudo-random
sample that does not depend on the file's order. Standard library only.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer

TURN = re.compile(r"\n\n(Human|Assistant): ")
ROLE = {"Human": "user", "Assistant": "assistant"}


def dialogue(text: str) -> list[dict[str, str]] | None:
    """The turns of one HH dialogue, or None when it does not alternate user / assistant
    from the user's first turn to the assistant's last."""
    parts = TURN.split(text)
    if parts[0].strip():
        return None
    turns = [
        {"role": ROLE[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)
    ]
    roles = [t["role"] for t in turns]
    if not turns or roles != ["user", "assistant"] * (len(turns) // 2) or len(turns) % 2:
        return None
    return turns


def convert(row: dict[str, Any]) -> dict[str, Any] | None:
    """One TRL conversational pair, or None when the row is not a clean pair."""
    chosen, rejected = dialogue(row["chosen"]), dialogue(row["rejected"])
    if chosen is None or rejected is None or chosen[:-1] != rejected[:-1]:
        return None
    a, b = chosen[-1]["content"], rejected[-1]["content"]
    if not a or not b or a == b or any(not t["content"] for t in chosen[:-1]):
        return None
    return {"prompt": chosen[:-1], "chosen": [chosen[-1]], "rejected": [rejected[-1]]}


def size(pair: dict[str, Any]) -> tuple[int, int]:
    """(whitespace words, characters) of the prompt's turns and both answers."""
    texts = [m["content"] for key in ("prompt", "chosen", "rejected") for m in pair[key]]
    return sum(len(t.split()) for t in texts), sum(len(t) for t in texts)


def main(
    source: Annotated[Path, typer.Argument(help="harmless-base/test.jsonl.gz of hh-rlhf.")],
    out: Annotated[Path, typer.Argument(help="JSONL to write.")],
    pairs: Annotated[int, typer.Option(help="Pairs to keep.")] = 300,
    max_words: Annotated[int, typer.Option(help="Words in prompt + both answers.")] = 80,
    max_chars: Annotated[int, typer.Option(help="Characters in prompt + both answers.")] = 500,
) -> None:
    label = f"{source.parent.name}/{source.name}"
    eligible: list[tuple[str, dict[str, Any]]] = []
    with gzip.open(source, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            pair = convert(json.loads(line))
            if pair is None:
                continue
            words, chars = size(pair)
            if words > max_words or chars > max_chars:
                continue
            digest = hashlib.sha256(line.rstrip("\n").encode("utf-8")).hexdigest()
            eligible.append((digest, {"id": f"{label}:{lineno}", **pair}))
    eligible.sort(key=lambda item: item[0])
    if len(eligible) < pairs:
        raise typer.BadParameter(f"only {len(eligible)} eligible rows, asked for {pairs}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for _, pair in eligible[:pairs]:
            fh.write(json.dumps(pair, ensure_ascii=False) + "\n")
    typer.echo(f"{len(eligible)} eligible rows in {label}; wrote the first {pairs} -> {out}")


if __name__ == "__main__":
    typer.run(main)
