"""Generation engines head to head: HF ``generate`` vs vLLM, steered and not, one run.

    python benchmarks/engines.py --prompts 256 --new-tokens 128

Prints one JSON line per (engine, steered) — engine, dtype, prompts, steered, new tokens,
seconds, tokens/s, start-up seconds — then one line of ratios: steered/unsteered time per
engine (target ≤ 1.05) and vLLM/HF tokens/s with steering on (target ≥ 1.4 on 2 CPU
cores). Both engines are held at once and their runs interleaved (best of ``--repeats``),
so a change in the machine's load hits both alike. Every row generates exactly
``--new-tokens`` (``ignore_eos``), so equal work is compared. Needs the ``model`` stage's
output and ``directions.safetensors`` (``dvc repro directions``), or ``--random-direction``
(a seeded unit vector per layer, scaled like a γ = 1 contrastive step: the cost is the same).
``--mixed`` steers with 8 vector sets (4 criteria × ±γ) as the ``pairs`` stage does; vLLM
runs them in one continuous batch. Needs the vLLM extra (docs/configuration.md, "Generation
engine").
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import typer

from icon2.core.layers import middle_third
from icon2.core.params import VLLMParams
from icon2.core.precision import compute_device, machine, resolve_dtype
from icon2.core.prompts import read_instructions
from icon2.engines.base import Backend, Sampling, SteeringInput
from icon2.engines.hf import HFBackend
from icon2.engines.vllm import VLLMBackend
from icon2.model.chat import end_of_turn_ids, render_prompt
from icon2.model.loading import load_local
from icon2.steps import direction_file
from icon2.steps.direction_file import steering_groups

Dtype = Literal["auto", "bfloat16", "float16", "float32"]


def main(
    model_dir: Annotated[Path, typer.Option(help="Output of the model stage.")] = Path(
        "data/model"
    ),
    directions: Annotated[Path, typer.Option(help="directions.safetensors.")] = Path(
        "data/directions/directions.safetensors"
    ),
    features: Annotated[Path, typer.Option(help="Prompts (instruction column).")] = Path(
        "data/features.jsonl"
    ),
    prompts: int = 256,
    new_tokens: int = 128,
    dtype: Annotated[
        Dtype, typer.Option(help="Both engines' dtype; auto = bf16 where native, else fp32.")
    ] = "auto",
    hf_batch_size: int = 128,
    gamma: float = 0.5,
    repeats: int = 1,
    random_direction: bool = False,
    mixed: Annotated[
        bool, typer.Option(help="Steer with 8 vector sets, as `pairs` does (4 criteria × ±γ).")
    ] = False,
) -> None:
    dtype = resolve_dtype("vllm.dtype", dtype, compute_device("auto")).value  # type: ignore[assignment]
    t0 = time.perf_counter()
    model, tok, card = load_local(model_dir, dtype=dtype)
    startup = {"hf": time.perf_counter() - t0}
    stops = end_of_turn_ids(tok)
    questions = read_instructions(features)
    texts = [render_prompt(tok, q) for q in (questions * (prompts // len(questions) + 1))]
    texts = texts[:prompts]
    layers = middle_third(card["num_layers"])
    if random_direction:
        g = torch.Generator().manual_seed(0)
        unit = torch.nn.functional.normalize(torch.randn(card["hidden_size"], generator=g), dim=0)
        vecs: SteeringInput = {layer: (gamma * 6.0 * unit).expand(prompts, -1) for layer in layers}
    else:
        dfile = direction_file.load_directions(directions)
        names = sorted(dfile.criteria) if mixed else ["general"]
        crit = [names[i % len(names)] for i in range(prompts)]
        signs = [1.0 if not mixed or (i // len(names)) % 2 == 0 else -1.0 for i in range(prompts)]
        vecs = steering_groups(dfile, crit, [gamma * s for s in signs], layers, "contrastive_norm")
    t0 = time.perf_counter()
    engines: dict[str, Backend] = {
        "hf": HFBackend(model, tok, stop_ids=stops, batch_size=hf_batch_size),
        "vllm": VLLMBackend(model_dir, tok, stop_ids=stops, settings=VLLMParams(dtype=dtype)),
    }
    startup["vllm"] = time.perf_counter() - t0
    s = Sampling(max_new_tokens=new_tokens, ignore_eos=True)
    for engine in engines.values():  # warm-up: first shapes, compiled kernels
        engine.generate(texts[:4], Sampling(max_new_tokens=4))
    runs = [(e, st) for e in engines for st in (False, True)]
    best: dict[tuple[str, bool], float] = {}
    for r in range(repeats):
        for name, steered in runs if r % 2 == 0 else runs[::-1]:
            t = time.perf_counter()
            out = engines[name].generate(texts, s, vectors=vecs if steered else None)
            sec = time.perf_counter() - t
            assert sum(g.token_count for g in out) == prompts * new_tokens
            best[(name, steered)] = min(sec, best.get((name, steered), float("inf")))
            _line(  # every run as it ends; the ratios below use the best of each
                {
                    "engine": name,
                    "dtype": dtype,
                    "prompts": prompts,
                    "steered": steered,
                    "new_tokens": new_tokens,
                    "seconds": round(sec, 2),
                    "tokens_per_s": round(prompts * new_tokens / sec, 1),
                    "startup_s": round(startup[name], 1),
                    "repeat": r,
                }
            )
    _line(
        {
            "hf_steered_over_unsteered": round(best["hf", True] / best["hf", False], 3),
            "vllm_steered_over_unsteered": round(best["vllm", True] / best["vllm", False], 3),
            "vllm_over_hf_tokens_per_s_steered": round(best["hf", True] / best["vllm", True], 3),
            "threads": torch.get_num_threads(),
            "vector_sets": 8 if mixed and not random_direction else 1,
            "machine": machine(),
        }
    )


def _line(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    typer.run(main)
