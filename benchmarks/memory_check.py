"""The memory planner against a measured training run, on this machine (CPU: resident memory).

    python benchmarks/memory_check.py --model data/model --batch 2 --max-length 256

Runs the ``train`` stage for a few steps on ``--model`` with pairs whose answers run past
``--max-length`` tokens (cut there: the planner's padding worst case) and records, inside
that process, its resident memory just before the first model is loaded and its peak
(``VmHWM``) at the end: the difference is what the models, gradients, optimizer and
activations took. Then asks ``stages/memory.py`` for the same settings (one process, fp32,
no sharding) and prints both, term by term, without the planner's fixed GPU overhead (a
CUDA context has no CPU counterpart). One JSON object; never asserted in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

REPO = Path(__file__).resolve().parent.parent

# Runs stages/train.py in this process after wrapping load_model: resident memory before the
# first load, and the peak at exit, written to the JSON file named last on the command line.
_PROBE = """
import atexit, json, runpy, sys
from pathlib import Path
import icon2.stage as stage
out = Path(sys.argv.pop())
def rss(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
seen = {}
original = stage.load_model
def load_model(*args, **kwargs):
    seen.setdefault("before_models", rss("VmRSS"))
    return original(*args, **kwargs)
stage.load_model = load_model
atexit.register(lambda: out.write_text(json.dumps({**seen, "peak": rss("VmHWM")})))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _pairs(path: Path, n: int, words: int) -> None:
    import polars as pl

    from icon2.core.tables import PAIR_SCHEMA

    filler = " ".join(["word"] * words)
    rows = [
        {
            "id": f"{i:04d}",
            "split": "train",
            "criterion": "general",
            "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "chosen": [{"role": "assistant", "content": f"Yes {filler}"}],
            "rejected": [{"role": "assistant", "content": f"No {filler}"}],
            "gamma_pos": 0.1,
            "gamma_neg": -0.05,
            "gamma_scale": "contrastive_norm",
            "layers": [1],
            "chosen_tokens": words,
            "rejected_tokens": words,
            "chosen_finish": "stop",
            "rejected_finish": "stop",
        }
        for i in range(n)
    ]
    pl.DataFrame(rows, schema=PAIR_SCHEMA).write_parquet(path)


def main(
    model: Annotated[Path, typer.Option(help="A model stage output (data/model).")] = Path(
        "data/model"
    ),
    batch: int = 2,
    max_length: int = 256,
    steps: int = 2,
    checkpointing: bool = False,
) -> None:
    from icon2.core.precision import machine

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pairs = work / "pairs.parquet"
        _pairs(pairs, batch * steps, max_length)  # every sequence is cut at max_length
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["base"]["dtype"] = "float32"
        params["train"].update(
            pairs=str(pairs),
            precision="fp32",
            max_steps=steps,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=1,
            max_length=max_length,
            gradient_checkpointing=checkpointing,
            loss="dpo",
            precompute_ref_log_probs=False,
        )
        p = work / "params.yaml"
        p.write_text(yaml.safe_dump(params, sort_keys=False))
        probe = work / "probe.json"
        command = [sys.executable, "-c", _PROBE, str(REPO / "stages/train.py")]
        command += ["--model-dir", str(model), "--pairs", str(pairs), "--out", str(work / "m")]
        command += ["--metrics", str(work / "t.json"), "--live", str(work / "live")]
        command += ["--params", str(p), str(probe)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"error: the train run failed: {done.stderr[-1500:]}")
        seen = json.loads(probe.read_text())
        planner = [sys.executable, str(REPO / "stages/memory.py"), "--model", str(model)]
        plan = subprocess.run(
            [*planner, "--params", str(p), "--gpus", "1", "--sharding", "none"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    terms: dict[str, Any] = {}
    for line in plan.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "GiB":
            terms[parts[0]] = float(parts[1])
    planned = sum(v for k, v in terms.items() if k != "overhead")
    measured = (seen["peak"] - seen["before_models"]) / 2**30
    print(
        json.dumps(
            {
                "batch": batch,
                "max_length": max_length,
                "checkpointing": checkpointing,
                "planned_terms_gib": terms,
                "planned_without_overhead_gib": round(planned, 3),
                "measured_gib": round(measured, 3),
                "measured_over_planned": round(measured / planned, 3),
                "rss_before_models_gib": round(seen["before_models"] / 2**30, 3),
                "machine": machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    typer.run(main)
