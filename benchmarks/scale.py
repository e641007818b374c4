"""The data steps at paper scale, simulated: time and peak memory per step and size.

    python benchmarks/scale.py                         # 10k, 100k and 1M rows
    python benchmarks/scale.py --sizes 10000 --sizes 100000 --exact-max 100000
    python benchmarks/scale.py --only near_dup_ann         # the approximate pass alone

Synthetic inputs stand in for the model's work (no model runs): an instruction table of N
sampled texts (a share truncated, exact and near duplicates planted), unit embeddings of
dimension 384 (MiniLM's) with the near duplicates planted as noisy copies, a score table for
four criteria, and a pair table of N/10 rows. Each (size, step) runs in a fresh process, so
its peak resident memory (`ru_maxrss` of that process, model-free) is the step's own:

* ``clean``      — A2's rules up to exact duplicates (no embeddings);
* ``near_dup``   — A2's exact near-duplicate pass (blocked all-pairs), up to ``--exact-max``
  rows: above it the all-pairs cost is extrapolated, not run;
* ``near_dup_ann``— the approximate pass used above ``synthesize.near_dup_exact_max`` (FAISS
  IVF range search), with its recall of the planted near duplicates and the rows it drops
  that were not planted (random 384-d rows are never that close);
* ``filter``     — A3's top-fraction filter and the train/validation split;
* ``leakage``    — appendix D's 13-gram check of 805 prompts against the N instructions;
* ``write_pairs``— the pair table (PAIR_SCHEMA) written as Parquet.

Prints one JSON object with every figure and the machine (never asserted in tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import polars as pl
import typer

app = typer.Typer(add_completion=False, help=__doc__)
STEPS = ("clean", "near_dup", "near_dup_ann", "filter", "leakage", "write_pairs")
WORDS = [f"w{i}" for i in range(5000)]
CRITERIA = ("honesty", "harmlessness", "helpfulness", "general")
DIM = 384


def _texts(n: int, rng: np.random.Generator) -> list[str]:
    """n instructions of 8–40 words; 5 % exact copies of an earlier one."""
    lengths = rng.integers(8, 41, n)
    words = rng.integers(0, len(WORDS), int(lengths.sum()))
    out, at = [], 0
    for length in lengths:
        out.append(" ".join(WORDS[w] for w in words[at : at + length]) + "?")
        at += length
    copies = rng.choice(n, n // 20, replace=False)
    for i in copies[copies > 0]:
        out[i] = out[int(rng.integers(0, i))]
    return out


def _raw(n: int) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    return pl.DataFrame(
        {
            "text": _texts(n, rng),
            "finish_reason": np.where(rng.random(n) < 0.2, "length", "stop"),
            "token_count": rng.integers(10, 60, n),
            "seed": np.arange(n),
        }
    )


def _embeddings(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows, and the rows that are noisy copies (cosine ≈ 0.99) of an earlier row (2 %)."""
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((n, DIM), dtype=np.float32)
    # In row order: a copy's source is never overwritten by a later plant.
    copies = np.sort(rng.choice(np.arange(1, n), n // 50, replace=False))
    for i in copies:
        emb[i] = emb[int(rng.integers(0, i))] + 0.1 * rng.standard_normal(DIM, dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, copies


def _run_step(step: str, n: int, scratch: Path) -> dict[str, Any]:
    """One step on n rows, in this process; returns its wall seconds and counts."""
    from icon2.steps import cleaning, filtering

    if step == "clean":
        raw = _raw(n)
        t0 = time.perf_counter()
        kept, counts = cleaning.clean(raw, min_chars=10, max_chars=10_000)
        return {"seconds": time.perf_counter() - t0, "kept": counts["kept"]}
    if step in ("near_dup", "near_dup_ann"):
        emb, copies = _embeddings(n)
        rule = cleaning._near_duplicates if step == "near_dup" else cleaning._near_duplicates_ann
        t0 = time.perf_counter()
        dropped = rule(emb, 0.95)
        seconds = time.perf_counter() - t0
        # A copy of a copy may be dropped through either: every planted row is a duplicate.
        planted = np.zeros(n, dtype=bool)
        planted[copies] = True
        return {
            "seconds": seconds,
            "near_duplicates": int(dropped.sum()),
            "recall_of_planted": round(float(dropped[planted].mean()), 5),
            "dropped_not_planted": int((dropped & ~planted).sum()),
        }
    if step == "filter":
        rng = np.random.default_rng(2)
        ids = [f"{i:012x}" for i in range(n)]
        scores = {f"raw_{c}": rng.standard_normal(n) for c in CRITERIA}
        frame = pl.DataFrame(
            {
                "id": ids,
                "instruction": ids,
                **scores,
                **{f"std_{c}": v for c, v in zip(CRITERIA, scores.values(), strict=True)},
                "criterion": rng.choice(CRITERIA, n),
                "consistency": rng.random(n),
                "margin": rng.random(n),
                "standardised": np.ones(n, dtype=bool),
            }
        )
        t0 = time.perf_counter()
        kept, _ = filtering.apply_filter(frame, rule="top_fraction", value=0.1)
        filtering.split(kept, validation_fraction=0.2, seed=0)
        return {"seconds": time.perf_counter() - t0, "kept": kept.height}
    if step == "leakage":
        from icon2.evaluate.leakage import ngram_leakage

        training = _texts(n, np.random.default_rng(3))
        prompts = _texts(805, np.random.default_rng(4))
        t0 = time.perf_counter()
        table = ngram_leakage(prompts, training)
        return {"seconds": time.perf_counter() - t0, "leaked": int(table["leaked"].sum())}
    if step == "write_pairs":
        from icon2.core.tables import PAIR_SCHEMA, write_table

        m = max(1, n // 10)
        turn = [{"role": "user", "content": "A question of twenty words or so, as asked?"}]
        answer = [{"role": "assistant", "content": "An answer of a few hundred characters. " * 8}]
        frame = pl.DataFrame(
            {
                "id": [f"{i:012x}" for i in range(m)],
                "split": ["train"] * m,
                "criterion": ["honesty"] * m,
                "prompt": [turn] * m,
                "chosen": [answer] * m,
                "rejected": [answer] * m,
                "gamma_pos": [0.1] * m,
                "gamma_neg": [-0.05] * m,
                "gamma_scale": ["contrastive_norm"] * m,
                "layers": [list(range(10, 21))] * m,
                "chosen_tokens": [300] * m,
                "rejected_tokens": [300] * m,
                "chosen_finish": ["stop"] * m,
                "rejected_finish": ["stop"] * m,
            },
            schema=PAIR_SCHEMA,
        )
        t0 = time.perf_counter()
        write_table(scratch / "pairs.parquet", frame, PAIR_SCHEMA, {"stage": "scale"})
        return {"seconds": time.perf_counter() - t0, "pairs": m}
    raise ValueError(f"unknown step {step!r}")


@app.command()
def main(
    sizes: Annotated[list[int], typer.Option(help="Rows of the instruction table.")] = [  # noqa: B006
        10_000,
        100_000,
        1_000_000,
    ],
    exact_max: Annotated[int, typer.Option(help="Largest n the exact near-dup pass runs.")] = (
        100_000
    ),
    steps: Annotated[
        list[str] | None, typer.Option("--only", help="Run only these steps (default: all).")
    ] = None,
    step: Annotated[str | None, typer.Option(hidden=True)] = None,
    rows: Annotated[int, typer.Option(hidden=True)] = 0,
    scratch: Annotated[Path, typer.Option(help="Scratch folder.")] = Path("/tmp/icon2-scale"),
) -> None:
    scratch.mkdir(parents=True, exist_ok=True)
    if step is not None:  # a child: one step, its result on stdout
        typer.echo(json.dumps(_run_step(step, rows, scratch)))
        return
    from icon2.core.precision import machine

    unknown = sorted(set(steps or []) - set(STEPS))
    if unknown:
        raise SystemExit(f"error: --only {unknown}: the steps are {', '.join(STEPS)}")
    results: list[dict[str, Any]] = []
    for n in sizes:
        for name in [s for s in STEPS if s in (steps or STEPS)]:
            if name == "near_dup" and n > exact_max:
                base = next(r for r in results if r["step"] == name and r["rows"] == exact_max)
                results.append(
                    {
                        "step": name,
                        "rows": n,
                        "extrapolated_seconds": round(base["seconds"] * (n / exact_max) ** 2, 1),
                    }
                )
                continue
            command = [sys.executable, __file__, "--step", name, "--rows", str(n)]
            command += ["--scratch", str(scratch)]
            proc = subprocess.Popen(command, stdout=subprocess.PIPE)
            out = proc.stdout.read() if proc.stdout else b""
            _, status, usage = os.wait4(proc.pid, 0)
            if status != 0:
                raise SystemExit(f"error: step {name} at {n} rows failed (status {status})")
            found = json.loads(out.decode().strip().splitlines()[-1])
            peak = usage.ru_maxrss * 1024 / 2**30  # KiB on Linux
            results.append(
                {"step": name, "rows": n, **found, "peak_rss_gib": round(peak, 3)}
                | {"seconds": round(found["seconds"], 3)}
            )
            typer.echo(json.dumps(results[-1]), err=True)
    typer.echo(json.dumps({"results": results, "machine": machine()}, indent=2))


if __name__ == "__main__":
    app()
