"""The planner's activation term against what a forward pass keeps for backward (CPU).

    python benchmarks/activations.py --model data/model --lengths 128 --lengths 256

For each attention implementation and length T, a fresh process loads ``--model`` in fp32,
runs the decoder (no LM head) on ``--sequences`` random sequences of T tokens (one of them
left-padded by a quarter, as a preference batch is), and records resident memory just
before the forward, just after it and the peak through the backward (activations, weight
gradients and the backward's transients; glibc's allocator makes these noisy by ±0.2 GiB),
and, exactly, the bytes of the distinct tensors autograd saves for backward, weights left
out (``torch.autograd.graph.saved_tensors_hooks``): the activations. The planner's figure
is ``layers × tokens × activation_values_per_token × 4`` bytes (``icon2.train.memory``). A
linear fit over the first two lengths splits the saved bytes into a per-token part (as
values per token and layer, the planner's unit) and a fixed part. One JSON object; never
asserted in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, help=__doc__)

_CHILD = """
import json, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

model_dir, impl, length, sequences = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(
    model_dir, dtype=torch.float32, attn_implementation=impl
)
model.train()
weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
saved = {}

def pack(t):
    storage = t.untyped_storage()
    if storage.data_ptr() not in weights:
        saved[storage.data_ptr()] = storage.nbytes()
    return t

ids = torch.randint(0, 1000, (sequences, length))
mask = torch.ones(sequences, length, dtype=torch.long)
mask[0, : length // 4] = 0
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
after_forward = status("VmRSS")
hidden.float().pow(2).mean().backward()
print(json.dumps({
    "saved": sum(saved.values()),
    "rss_after_forward": after_forward - before,
    "peak": status("VmHWM") - before,
}))
"""


@app.command()
def main(
    model: Annotated[Path, typer.Option(help="A model stage output (data/model).")] = Path(
        "data/model"
    ),
    lengths: Annotated[list[int], typer.Option(help="Sequence lengths T.")] = [128, 256],  # noqa: B006
    sequences: Annotated[int, typer.Option(help="Sequences per forward (2 x pairs).")] = 4,
    impls: Annotated[list[str], typer.Option(help="attn_implementation values.")] = [  # noqa: B006
        "sdpa",
        "eager",
    ],
) -> None:
    from icon2.core.precision import machine
    from icon2.train.memory import ModelShape

    config = json.loads((model / "config.json").read_text())
    shape = ModelShape.from_config(config)
    gib = 2**30
    rows: list[dict[str, Any]] = []
    for impl in impls:
        for length in lengths:
            command = [sys.executable, "-c", _CHILD, str(model), impl, str(length), str(sequences)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(
                    f"error: the {impl} forward at T={length} failed: {done.stderr[-800:]}"
                )
            seen = json.loads(done.stdout.strip().splitlines()[-1])
            tokens = sequences * length
            planned = shape.layers * tokens * shape.activation_values_per_token() * 4
            rows.append(
                {
                    "impl": impl,
                    "T": length,
                    "planned_activations_gib": round(planned / gib, 3),
                    "saved_for_backward_gib": round(seen["saved"] / gib, 3),
                    "rss_after_forward_gib": round(seen["rss_after_forward"] / gib, 3),
                    "rss_peak_gib": round(seen["peak"] / gib, 3),
                }
            )
    fits = {}
    for impl in impls:
        mine = [r for r in rows if r["impl"] == impl]
        if len(mine) >= 2:
            (t0, a0), (t1, a1) = [(r["T"], r["saved_for_backward_gib"]) for r in mine[:2]]
            slope = (a1 - a0) / (sequences * (t1 - t0))  # GiB per token
            fits[impl] = {
                "values_per_token_per_layer": round(slope * gib / (4 * shape.layers)),
                "fixed_gib": round(a0 - slope * sequences * t0, 3),
            }
    print(
        json.dumps(
            {
                "model_layers": shape.layers,
                "planner_values_per_token_per_layer": shape.activation_values_per_token(),
                "hidden": shape.hidden,
                "sequences": sequences,
                "rows": rows,
                "linear_fit": fits,
                "machine": machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    app()
