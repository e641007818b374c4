"""A finished run's matmul floor on this machine, stage by stage, against its measured time.

    python benchmarks/floor.py [--data data] [--params params.yaml]

After ``dvc repro``: each stage's matmul work is counted from what the run recorded (the
generating and reading stages' ``cost.json`` token counts; the pairs that ``train`` read,
tokenized with the chat template and packed as training packs them), the model's own GEMM
shapes are timed here in the dtypes ``auto`` resolves to (decoding at the stage's batch
rows, prompt reads at 4,096 positions, training forward and backward at 1,024), and each
stage gets: work (TFLOP), floor (that work at those measured rates, nothing else) and the
run's own engine or training seconds (``cost.json``'s ``wall_seconds``, ``train_seconds``),
with their ratio. The floor leaves out everything that is not a matmul (attention over the
cache, norms, the optimizer, Python), so no run reaches it; the ratio says how far each
stage is from it. ``evaluate`` and ``benchmark`` record no token counts and are not listed.
Run it on the machine that ran the job, with nothing else running.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import torch
import typer
from bench import _timed
from trl.data_utils import common_prefix_length

from icon2.core.params import load_params
from icon2.core.precision import generation_dtype, machine, train_precision
from icon2.model.loading import load_local

app = typer.Typer(add_completion=False, help=__doc__)

#: Positions per GEMM for prompt reads and training (packed rows hold up to 1,024).
READ_ROWS, TRAIN_ROWS = 4096, 1024


@dataclass(frozen=True)
class Shapes:
    """One decoder layer's linear maps (in, out), the layer count and the vocabulary map."""

    layer: tuple[tuple[int, int], ...]
    layers: int
    head: tuple[int, int]

    @classmethod
    def of(cls, config: Any) -> Shapes:
        h, heads = int(config.hidden_size), int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or h // heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads) * head_dim
        inter = int(config.intermediate_size)
        attention = ((h, heads * head_dim), (h, kv), (h, kv), (heads * head_dim, h))
        layer = (*attention, (h, inter), (h, inter), (inter, h))
        return cls(layer, int(config.num_hidden_layers), (h, int(config.vocab_size)))

    def flop(self, head: bool) -> int:
        """Forward FLOP for one position (2 per multiply-add)."""
        per = self.layers * sum(2 * i * o for i, o in self.layer)
        return per + (2 * self.head[0] * self.head[1] if head else 0)


def _best(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()  # warm-up: first calls pay for allocation and kernel selection
    return _timed(fn, repeats)


def _gemm_seconds(rows: int, shapes: tuple[tuple[int, int], ...], dtype: torch.dtype,
                  backward: bool) -> float:  # fmt: skip
    """Seconds for ``rows`` positions through these linear maps (forward, or the two
    backward GEMMs: the input's gradient and the weight's)."""
    total = 0.0
    for fan_in, fan_out in shapes:
        x = torch.randn(rows, fan_in, dtype=dtype)
        w = torch.randn(fan_out, fan_in, dtype=dtype)
        g = torch.randn(rows, fan_out, dtype=dtype)
        if backward:
            total += _best(partial(torch.mm, g, w)) + _best(partial(torch.mm, g.t(), x))
        else:
            total += _best(partial(torch.nn.functional.linear, x, w))
    return total


@dataclass(frozen=True)
class Rates:
    """Measured seconds per position: a decoder pass (all layers) and the vocabulary map."""

    layers: float
    head: float

    @classmethod
    def measure(cls, shapes: Shapes, rows: int, dtype: torch.dtype, backward: bool) -> Rates:
        layer = _gemm_seconds(rows, shapes.layer, dtype, backward) * shapes.layers
        head = _gemm_seconds(rows, (shapes.head,), dtype, backward)
        return cls(layer / rows, head / rows)

    def gflops(self, shapes: Shapes, factor: int = 1) -> float:
        """The measured rate over a whole pass (layers and vocabulary map); ``factor`` 2 for
        the backward's two GEMMs per map."""
        return round(factor * shapes.flop(True) / (self.layers + self.head) / 1e9, 1)


def _torch_dtype(name: str) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
            "fp16": torch.float16}.get(name, torch.float32)  # fmt: skip


def _cost_rows(data: Path) -> list[dict[str, Any]]:
    rows = []
    for stage in ("directions", "synthesize", "score", "pairs"):
        path = data / stage / "cost.json"
        if path.is_file():
            rows += json.loads(path.read_text(encoding="utf-8"))["cost"]
    return rows


def _ids(tokenizer: Any, messages: list[dict[str, str]], **kwargs: Any) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    return list(encoded["input_ids"])


def _train_counts(pairs: Path, tokenizer: Any) -> dict[str, dict[str, int]]:
    """Per split: packed positions (a pair's shared prefix once) and answer positions."""
    out: dict[str, dict[str, int]] = {}
    for row in pl.read_parquet(pairs).to_dicts():
        prompt = _ids(tokenizer, row["prompt"], add_generation_prompt=True)
        full = [_ids(tokenizer, row["prompt"] + row[s]) for s in ("chosen", "rejected")]
        split = out.setdefault(row["split"], {"pairs": 0, "positions": 0, "answer": 0})
        split["pairs"] += 1
        split["positions"] += sum(map(len, full)) - common_prefix_length(*full)
        split["answer"] += sum(map(len, full)) - 2 * len(prompt)
    return out


def _stage(name: str, flop: float, floor: float, measured: float | None) -> dict[str, Any]:
    return {
        "stage": name,
        "tflop": round(flop / 1e12, 2),
        "floor_s": round(floor, 1),
        "measured_s": measured,
        "ratio": None if not measured else round(measured / floor, 2),
    }


@app.command()
def main(
    data: Annotated[Path, typer.Option(help="The run's data folder.")] = Path("data"),
    params: Annotated[Path, typer.Option(help="The run's params file.")] = Path("params.yaml"),
) -> None:
    p = load_params(params)
    gen, trained = generation_dtype(p), train_precision(p)
    model, tokenizer, _ = load_local(data / "model")
    shapes = Shapes.of(model.config)
    gen_dtype = _torch_dtype(gen.value if gen.value != "null" else str(p.base.dtype))
    train_dtype = _torch_dtype(trained.value)
    batch = {"synthesize": p.synthesize.batch_size, "pairs": p.pairs.batch_size}
    read = Rates.measure(shapes, READ_ROWS, gen_dtype, backward=False)
    stages, rates = [], {"read": read.gflops(shapes)}
    for rec in _cost_rows(data):
        rows = batch.get(rec["stage"])
        decode = Rates.measure(shapes, rows, gen_dtype, backward=False) if rows else read
        if rows:
            rates[f"{rec['stage']}_decode_{rows}_rows"] = decode.gflops(shapes)
        floor = rec["tokens_read"] * read.layers
        floor += rec["tokens_generated"] * (decode.layers + decode.head)
        flop = rec["tokens_read"] * shapes.flop(False) + rec["tokens_generated"] * shapes.flop(True)
        stages.append(_stage(rec["stage"], flop, floor, rec["wall_seconds"]))
    counts = _train_counts(Path(p.train.pairs), tokenizer)
    fwd = Rates.measure(shapes, TRAIN_ROWS, train_dtype, backward=False)
    bwd = Rates.measure(shapes, TRAIN_ROWS, train_dtype, backward=True)
    train, val = counts.get("train", {}), counts.get("validation", {})
    # The policy runs forward and backward, the reference forward; validation runs both
    # forward only.
    floor = train.get("positions", 0) * (2 * fwd.layers + bwd.layers)
    floor += train.get("answer", 0) * (2 * fwd.head + bwd.head)
    floor += 2 * (val.get("positions", 0) * fwd.layers + val.get("answer", 0) * fwd.head)
    layer_flop, head_flop = shapes.flop(False), shapes.flop(True) - shapes.flop(False)
    flop = train.get("positions", 0) * 4 * layer_flop + train.get("answer", 0) * 4 * head_flop
    flop += 2 * (val.get("positions", 0) * layer_flop + val.get("answer", 0) * head_flop)
    metrics = data / "train" / "metrics.json"
    measured = json.loads(metrics.read_text())["train_seconds"] if metrics.is_file() else None
    stages.append(_stage("train", flop, floor, measured))
    result = {
        "dtypes": {"generation": str(gen_dtype), "train": str(train_dtype)},
        "rates_gflops": {
            **rates,
            "train_forward": fwd.gflops(shapes),
            "train_backward": bwd.gflops(shapes, factor=2),
        },
        "train_counts": counts,
        "stages": stages,
        "total": _stage(
            "total",
            sum(s["tflop"] for s in stages) * 1e12,
            sum(s["floor_s"] for s in stages),
            sum(s["measured_s"] or 0 for s in stages) or None,
        ),
    }
    typer.echo(json.dumps({**result, "machine": machine()}, indent=2))


if __name__ == "__main__":
    app()
