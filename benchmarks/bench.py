"""Benchmarks, measured in one run and printed as ratios and rates (never asserted in tests).

    python benchmarks/bench.py generation   # steered vs unsteered time, pair-generation tokens/s
    python benchmarks/bench.py scoring      # batched vs one-at-a-time consistency reads
    python benchmarks/bench.py training     # DPO steps/s, peak memory, ref precompute, DRO share
    python benchmarks/bench.py kv-cache     # in-place KV cache vs transformers' DynamicCache
    python benchmarks/bench.py cache-paths  # the same vs StaticCache and compiled generate
    python benchmarks/bench.py drop-finished  # decoding that drops finished rows vs generate
    python benchmarks/bench.py gqa          # masked decoding: SDPA's grouped heads vs repeat_kv
    python benchmarks/bench.py packing      # DPO steps: packed pairs vs padded batches

Both use the ``model`` stage's output and ``directions.safetensors`` (run ``dvc repro
directions`` first; ``training`` also needs ``data/pairs/pairs.parquet``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import torch
import typer

from icon2.core.layers import middle_third
from icon2.core.precision import machine, resolve_dtype
from icon2.core.prompts import read_instructions
from icon2.engines.base import Sampling, Steering
from icon2.engines.hf import HFBackend
from icon2.model.chat import end_of_turn_ids, pre_query_template, render_prompt
from icon2.model.loading import load_local
from icon2.model.states import last_token_states
from icon2.steps import direction_file
from icon2.steps.direction_file import steering_groups

app = typer.Typer(add_completion=False, help=__doc__)
ModelDir = Annotated[Path, typer.Option(help="Output of the model stage.")]
Directions = Annotated[Path, typer.Option(help="directions.safetensors.")]
Features = Annotated[Path, typer.Option(help="Prompts to use (instruction column).")]
AnswerParams = Annotated[Path, typer.Option(help="For base.system_prompt and hf.dtype.")]


def _timed(fn: Any, repeats: int) -> float:
    """Best of ``repeats`` wall times (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _steered_prompts(
    model_dir: Path, directions: Path, features: Path, prompts: int
) -> tuple[Any, Any, list[str], Steering]:
    """The model, its tokenizer, `prompts` rendered feature prompts and their steering
    groups as `pairs` builds them (general direction, γ = 0.1, the middle third)."""
    model, tok, card = load_local(model_dir)
    dfile = direction_file.load_directions(directions)
    texts = [render_prompt(tok, q) for q in read_instructions(features)[:prompts]]
    layers = middle_third(card["num_layers"])
    vecs = steering_groups(
        dfile, ["general"] * len(texts), [0.1] * len(texts), layers, "contrastive_norm"
    )
    return model, tok, texts, vecs


@app.command()
def generation(
    model_dir: ModelDir = Path("data/model"),
    directions: Directions = Path("data/directions/directions.safetensors"),
    features: Features = Path("data/features.jsonl"),
    prompts: int = 16,
    new_tokens: int = 64,
    batch_size: int = 16,
    repeats: int = 3,
) -> None:
    """Steered vs unsteered generation time on identical prompts and token counts."""
    model, tok, texts, vecs = _steered_prompts(model_dir, directions, features, prompts)
    backend = HFBackend(model, tok, stop_ids=end_of_turn_ids(tok), batch_size=batch_size)
    # ignore_eos: both runs generate exactly new_tokens per row, so only the hooks differ.
    s = Sampling(max_new_tokens=new_tokens, ignore_eos=True)
    backend.generate(texts[:2], Sampling(max_new_tokens=4))  # warm-up
    # Interleaved, best of each: the order of the runs must not favour either side.
    plain = steered = float("inf")
    for _ in range(repeats):
        plain = min(plain, _timed(lambda: backend.generate(texts, s), 1))
        steered = min(steered, _timed(lambda: backend.generate(texts, s, vectors=vecs), 1))
    tokens = len(texts) * new_tokens
    _report(
        {
            "device": str(next(model.parameters()).device),
            "threads": torch.get_num_threads(),
            "prompts": len(texts),
            "new_tokens_per_prompt": new_tokens,
            "batch_size": batch_size,
            "unsteered_s": round(plain, 3),
            "steered_s": round(steered, 3),
            "steered_over_unsteered": round(steered / plain, 4),
            "pair_generation_tokens_per_s": round(tokens / steered, 1),
        }
    )


@app.command()
def kv_cache(
    model_dir: ModelDir = Path("data/model"),
    directions: Directions = Path("data/directions/directions.safetensors"),
    features: Features = Path("data/features.jsonl"),
    prompts: int = 128,
    new_tokens: int = 320,
    dtype: str = "auto",
    rounds: int = 2,
) -> None:
    """The HF engine's decoding, steered as in `pairs`, with the reserved KV cache vs
    transformers' concatenating DynamicCache: one batch of `prompts` rows, `new_tokens` each
    (the `pairs` stage's batch and budget by default). Rounds alternate the order."""
    model, tok, texts, vecs = _steered_prompts(model_dir, directions, features, prompts)
    dtype = resolve_dtype("hf.dtype", dtype, "cpu").value  # auto: bf16 where native, else fp32
    model.to(getattr(torch, dtype))
    s = Sampling(max_new_tokens=new_tokens, ignore_eos=True, repetition_penalty=1.1)
    stop = end_of_turn_ids(tok)
    backends = {
        kind: HFBackend(model, tok, stop_ids=stop, batch_size=len(texts), kv_cache=kind)
        for kind in ("reserved", "dynamic")
    }
    backends["dynamic"].generate(texts[:2], Sampling(max_new_tokens=4))  # warm-up
    best = {kind: float("inf") for kind in backends}
    outputs: dict[str, list[str]] = {}
    for r in range(rounds):
        for kind in ("reserved", "dynamic") if r % 2 == 0 else ("dynamic", "reserved"):
            t0 = time.perf_counter()
            outputs[kind] = [g.text for g in backends[kind].generate(texts, s, vectors=vecs)]
            best[kind] = min(best[kind], time.perf_counter() - t0)
    tokens = len(texts) * new_tokens
    _report(
        {
            "dtype": dtype,
            "threads": torch.get_num_threads(),
            "prompts": len(texts),
            "new_tokens_per_prompt": new_tokens,
            "reserved_s": round(best["reserved"], 2),
            "dynamic_s": round(best["dynamic"], 2),
            "reserved_tokens_per_s": round(tokens / best["reserved"], 1),
            "dynamic_tokens_per_s": round(tokens / best["dynamic"], 1),
            "reserved_over_dynamic_tokens_per_s": round(best["dynamic"] / best["reserved"], 3),
            "same_text": outputs["reserved"] == outputs["dynamic"],
        }
    )


@app.command()
def cache_paths(
    model_dir: ModelDir = Path("data/model"),
    features: Features = Path("data/features.jsonl"),
    prompts: int = 64,
    new_tokens: int = 128,
    dtype: str = "auto",
    rounds: int = 2,
) -> None:
    """Greedy ``generate`` on one batch (unsteered: forward hooks and compiled graphs do not
    mix) with each of transformers' cache paths beside the engine's reserved cache:
    ``DynamicCache`` (the default), ``StaticCache`` and ``StaticCache`` with the forward
    compiled by ``generate`` (``CompileConfig``; on CPU it must be asked for). The compiled
    path is warmed up first, so its compile time is reported apart."""
    from transformers.generation.configuration_utils import CompileConfig

    from icon2.engines.kv_cache import cache_argument, reserved_cache
    from icon2.model.hooks import tokenize_left

    loaded, tok, _ = load_local(model_dir)
    model: Any = loaded
    dtype = resolve_dtype("hf.dtype", dtype, "cpu").value
    model.to(getattr(torch, dtype))
    texts = [render_prompt(tok, q) for q in read_instructions(features)[:prompts]]
    batch = tokenize_left(tok, texts, torch.device("cpu"))
    batch.pop("position_ids", None)
    base = {
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": False,
        "pad_token_id": tok.pad_token_id,
    }
    keyword = cache_argument(model) or "past_key_values"  # "cache" in transformers >= 5.2x
    compiled = CompileConfig(mode="default")  # "reduce-overhead" means CUDA graphs
    # generate compiles on GPUs only unless told (a class attribute, typed None)
    compiled._compile_all_devices = True  # type: ignore[assignment]
    paths: dict[str, Any] = {
        "dynamic": lambda: {"disable_compile": True},
        "reserved": lambda: {keyword: reserved_cache(model, new_tokens)},
        "static": lambda: {"cache_implementation": "static", "disable_compile": True},
        "static_compiled": lambda: {
            "cache_implementation": "static",
            "compile_config": compiled,
        },
    }

    def run(kind: str) -> list[list[int]]:
        with torch.inference_mode():
            out = model.generate(**batch, **base, **paths[kind]())
        return [row.tolist() for row in out[:, batch["input_ids"].shape[1] :]]

    t0 = time.perf_counter()
    run("static_compiled")  # compiles
    compile_s = time.perf_counter() - t0
    best = {kind: float("inf") for kind in paths}
    tokens: dict[str, list[list[int]]] = {}
    order = list(paths)
    for r in range(rounds):
        for kind in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            tokens[kind] = run(kind)
            best[kind] = min(best[kind], time.perf_counter() - t0)
    n = len(texts) * new_tokens
    _report(
        {
            "dtype": dtype,
            "threads": torch.get_num_threads(),
            "prompts": len(texts),
            "new_tokens_per_prompt": new_tokens,
            "first_compiled_run_s": round(compile_s, 1),
            **{f"{k}_tokens_per_s": round(n / v, 1) for k, v in best.items()},
            **{f"{k}_over_reserved": round(best["reserved"] / v, 3) for k, v in best.items()},
            "same_tokens_as_dynamic": {k: tokens[k] == tokens["dynamic"] for k in paths},
        }
    )


def _answer_prompts(
    model_dir: Path, features: Path, params: Path, prompts: int
) -> tuple[Any, Any, list[str], str]:
    """The model in ``hf.dtype`` (resolved for the CPU), its tokenizer, ``prompts`` feature
    questions rendered with ``base.system_prompt`` as `pairs` renders them, and the dtype."""
    from icon2.core.params import load_params

    p = load_params(params)
    model, tok, _ = load_local(model_dir)
    dtype = resolve_dtype("hf.dtype", p.hf.dtype, "cpu").value
    model.to(getattr(torch, dtype))
    questions = read_instructions(features)[:prompts]
    return model, tok, [render_prompt(tok, q, p.base.system_prompt) for q in questions], dtype


@app.command()
def drop_finished(
    model_dir: ModelDir = Path("data/model"),
    features: Features = Path("data/features.jsonl"),
    params: AnswerParams = Path("params.yaml"),
    prompts: int = 64,
    new_tokens: int = 320,
) -> None:
    """Real answers (the default system prompt, greedy, repetition penalty 1.1, as `pairs`)
    in one batch: the decoding loop that drops finished rows vs transformers' `generate`,
    which computes every row until the longest ends. Same tokens; time and row-steps."""
    model, tok, texts, dtype = _answer_prompts(model_dir, features, params, prompts)
    s = Sampling(max_new_tokens=new_tokens, repetition_penalty=1.1)
    stop = end_of_turn_ids(tok)
    seconds, outputs = {}, {}
    for drop in (True, False):
        backend = HFBackend(model, tok, stop_ids=stop, batch_size=len(texts), drop_finished=drop)
        backend.generate(texts[:2], Sampling(max_new_tokens=4))  # warm-up
        t0 = time.perf_counter()
        outputs[drop] = backend.generate(texts, s)
        seconds[drop] = time.perf_counter() - t0
    tokens = sum(g.token_count for g in outputs[True])
    _report(
        {
            "dtype": dtype,
            "prompts": len(texts),
            "budget": new_tokens,
            "tokens_generated": tokens,
            "row_steps_generate": len(texts) * max(g.token_count for g in outputs[False]),
            "drop_finished_s": round(seconds[True], 1),
            "generate_s": round(seconds[False], 1),
            "generate_over_drop_finished": round(seconds[False] / seconds[True], 3),
            "same_tokens": outputs[True] == outputs[False],
        }
    )


@app.command()
def gqa(
    model_dir: ModelDir = Path("data/model"),
    features: Features = Path("data/features.jsonl"),
    params: AnswerParams = Path("params.yaml"),
    prompts: int = 128,
    new_tokens: int = 320,
    repeats: int = 2,
) -> None:
    """Masked (left-padded) decoding as `pairs` runs it, with transformers' ``repeat_kv``
    copies of the key/value heads vs SDPA reading the grouped heads in place
    (``TRANSFORMERS_SDPA_FORCE_GQA``). Same tokens in fp32; the stages leave it unset (see
    benchmarks/README.md)."""
    import os

    force_gqa = "TRANSFORMERS_SDPA_FORCE_GQA"  # transformers' switch, read at every call
    model, tok, texts, dtype = _answer_prompts(model_dir, features, params, prompts)
    s = Sampling(max_new_tokens=new_tokens, repetition_penalty=1.1)
    backend = HFBackend(model, tok, stop_ids=end_of_turn_ids(tok), batch_size=len(texts))
    backend.generate(texts[:2], Sampling(max_new_tokens=4))  # warm-up
    seconds = {"0": float("inf"), "1": float("inf")}
    outputs = {}
    for _ in range(repeats):  # interleaved, best of each
        for flag in ("0", "1"):
            os.environ[force_gqa] = flag
            t0 = time.perf_counter()
            outputs[flag] = backend.generate(texts, s)
            seconds[flag] = min(seconds[flag], time.perf_counter() - t0)
    os.environ.pop(force_gqa)
    _report(
        {
            "dtype": dtype,
            "prompts": len(texts),
            "budget": new_tokens,
            "tokens_generated": sum(g.token_count for g in outputs["1"]),
            "repeat_kv_s": round(seconds["0"], 1),
            "grouped_sdpa_s": round(seconds["1"], 1),
            "repeat_kv_over_grouped": round(seconds["0"] / seconds["1"], 3),
            "same_tokens": outputs["0"] == outputs["1"],
        }
    )


@app.command()
def packing(
    model_dir: ModelDir = Path("data/model"),
    pairs: Annotated[Path, typer.Option(help="Preference table.")] = Path(
        "data/pairs/pairs.parquet"
    ),
    steps: int = 8,
    batch_size: int = 2,
) -> None:
    """DPO steps with each pair packed (no padding, the shared prompt once) vs padded
    batches, the rest as the `train` stage runs them (fp32 masters, train.precision auto);
    each in its own process. Same data order, so the losses must agree."""
    results = {
        name: _train_once(
            name, model_dir, pairs, steps, batch_size, "--packing", flag, "--learning-rate", "2e-5"
        )
        for name, flag in (("padded", "false"), ("packed", "true"))
    }
    padded, packed = results["padded"], results["packed"]
    gap = max(abs(a - b) for a, b in zip(padded["losses"], packed["losses"], strict=True))
    _report(
        {
            **results,
            "padded_over_packed_step_time": round(
                padded["seconds_per_step"] / packed["seconds_per_step"], 3
            ),
            "max_loss_difference": float(f"{gap:.3g}"),
        }
    )


@app.command()
def scoring(
    model_dir: ModelDir = Path("data/model"),
    features: Features = Path("data/features.jsonl"),
    instructions: int = 128,
    batch_size: int = 32,
) -> None:
    """Consistency-read throughput: batched + shared prefix vs one prompt at a time."""
    model, tok, _ = load_local(model_dir)
    texts = [render_prompt(tok, q) for q in read_instructions(features)[:instructions]]
    prefix = pre_query_template(tok)
    last_token_states(model, tok, texts[:2])  # warm-up
    batched = _timed(
        lambda: last_token_states(model, tok, texts, batch_size=batch_size, shared_prefix=prefix), 1
    )
    n_single = min(len(texts), 32)
    single = _timed(lambda: [last_token_states(model, tok, [t]) for t in texts[:n_single]], 1)
    _report(
        {
            "instructions": len(texts),
            "batch_size": batch_size,
            "batched_instructions_per_s": round(len(texts) / batched, 2),
            "single_instructions_per_s": round(n_single / single, 2),
            "batched_speedup": round((len(texts) / batched) / (n_single / single), 2),
        }
    )


@app.command()
def training(
    model_dir: ModelDir = Path("data/model"),
    pairs: Annotated[Path, typer.Option(help="Preference table.")] = Path(
        "data/pairs/pairs.parquet"
    ),
    steps: int = 4,
    batch_size: int = 4,
) -> None:
    """DPO steps/s and peak memory; precomputed reference log-probs; DRO solve share.

    Each configuration runs in its own process so that its peak RSS is its own.
    """
    configs = {
        "dpo": ["--loss", "dpo"],
        "dpo_precomputed_ref": ["--loss", "dpo", "--precompute"],
        "spa": ["--loss", "spa"],
        "dro_resolve_every_step": ["--loss", "dro", "--resolve-every", "1"],
    }
    results = {
        name: _train_once(name, model_dir, pairs, steps, batch_size, *extra)
        for name, extra in configs.items()
    }
    dpo, pre = results["dpo"], results["dpo_precomputed_ref"]
    dro = results["dro_resolve_every_step"]
    _report(
        {
            **results,
            "precomputed_ref_step_speedup": round(
                dpo["seconds_per_step"] / pre["seconds_per_step"], 3
            ),
            "precomputed_ref_total_speedup": round(dpo["total_seconds"] / pre["total_seconds"], 3),
            "dro_solve_share_of_step_time": round(
                dro["dro_solve_seconds"] / dro["step_seconds"], 4
            ),
        }
    )


@app.command(hidden=True)
def train_once(
    model_dir: ModelDir,
    pairs: Annotated[Path, typer.Option()],
    steps: int = 4,
    batch_size: int = 4,
    loss: str = "dpo",
    precompute: bool = False,
    resolve_every: int = 0,
    packing: str = "auto",
    learning_rate: float = 1e-6,
) -> None:
    import resource

    from icon2.core.params import TrainParams
    from icon2.core.tables import read_pairs
    from icon2.train.data import to_datasets
    from icon2.train.run import train

    policy, tok, _ = load_local(model_dir)
    ref, _, _ = load_local(model_dir)
    policy.train()
    train_ds, _ = to_datasets(read_pairs(pairs).with_columns(split=pl.lit("train")))
    tp = TrainParams.model_validate(
        {
            "loss": loss,
            "max_steps": steps,
            "per_device_train_batch_size": batch_size,
            "learning_rate": learning_rate,
            "max_length": 512,
            "precompute_ref_log_probs": precompute,
            "packing": {"auto": "auto", "true": True, "false": False}[packing],
            # Solve from the first step: the benchmark measures the solve's share of a step.
            "dro": {"resolve_every": resolve_every, "warmup_fraction": 0.0},
        }
    )
    result = train(
        tp,
        policy=policy,
        ref=ref,
        tokenizer=tok,
        train_dataset=train_ds,
        eval_dataset=None,
        seed=0,
    )
    trainer, total = result.trainer, result.seconds
    step_s = float(trainer.train_step_seconds)
    print(
        json.dumps(
            {
                "steps": int(trainer.state.global_step),
                "batch_size": batch_size,
                "seconds_per_step": round(step_s / max(trainer.state.global_step, 1), 3),
                "steps_per_s": round(trainer.state.global_step / step_s, 4),
                "step_seconds": round(step_s, 3),
                "total_seconds": round(total, 3),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "dro_solve_seconds": round(trainer.dro.solve_seconds, 4),
                "packing": result.packing_record,
                "losses": [h["loss"] for h in result.history if "loss" in h],
            }
        )
    )


def _train_once(
    name: str, model_dir: Path, pairs: Path, steps: int, batch_size: int, *extra: str
) -> dict[str, Any]:
    """One `train-once` run in its own process (so that its peak RSS is its own)."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "train-once",
        "--model-dir",
        str(model_dir),
        "--pairs",
        str(pairs),
        "--steps",
        str(steps),
        "--batch-size",
        str(batch_size),
        *extra,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _report(result: dict[str, Any]) -> None:
    """Every figure goes out with the machine it was measured on (CPU flags, cores, dtypes)."""
    typer.echo(json.dumps({**result, "machine": machine()}, indent=2))


if __name__ == "__main__":
    app()
