"""train → evaluate end to end on a tiny model, and their bad inputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
import yaml

from icon2.core.tables import PAIR_SCHEMA
from icon2.model.loading import read_card
from tests.conftest import REPO, run_stage
from tests.tiny import build_tiny_model

QUESTIONS = [
    "What is 2 + 2?",
    "Name a color.",
    "Say hello.",
    "Give me a tip.",
    "Tell a joke.",
    "What is the capital of France?",
    "Write one word.",
    "Count to three.",
]


def _pairs_file(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    frame = pl.DataFrame(
        {
            "id": [str(i) for i in range(len(rows))],
            "split": [r[3] for r in rows],
            "criterion": ["general"] * len(rows),
            "prompt": [[{"role": "user", "content": r[0]}] for r in rows],
            "chosen": [[{"role": "assistant", "content": r[1]}] for r in rows],
            "rejected": [[{"role": "assistant", "content": r[2]}] for r in rows],
        }
    )
    frame.write_parquet(path)
    return path


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    rows = [
        (q, f"A careful answer to: {q}", "No.", "validation" if i >= 6 else "train")
        for i, q in enumerate(QUESTIONS)
    ]
    return _pairs_file(tmp_path / "pairs.parquet", rows)


def live_series(live: Path, name: str) -> pl.DataFrame:
    """One training series of a dvclive directory (columns step and the metric's last name)."""
    return pl.read_csv(live / "plots/metrics/train" / f"{name}.tsv", separator="\t")


def _train(model: Path, pairs: Path, params: Path, out: Path) -> Any:
    return run_stage(
        "train",
        "--model-dir",
        model,
        "--pairs",
        pairs,
        "--out",
        out / "ckpt",
        "--metrics",
        out / "train.json",
        "--live",
        out / "live",
        "--params",
        params,
    )


TRAIN = {
    "max_steps": 2,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "per_device_eval_batch_size": 2,
    "max_length": 128,
    "learning_rate": 1e-3,
}


@pytest.mark.parametrize("loss", ["dpo", "spa", "dro"])
def test_train_then_evaluate(
    tiny_stage_model: Path,
    tiny_stage_directions: Path,
    pairs: Path,
    tmp_path: Path,
    write_params: Callable[..., Path],
    loss: str,
) -> None:
    params = write_params(
        {
            "train": {**TRAIN, "loss": loss},
            "evaluate": {"max_new_tokens": 12, "batch_size": 4, "samples": 2},
        }
    )
    r = _train(tiny_stage_model, pairs, params, tmp_path)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "train.json").read_text())
    assert m["optimizer_steps"] == 2 and m["train_pairs"] == 6 and m["validation_pairs"] == 2
    assert {"final_loss", "final_reward_accuracy", "eval_loss"} <= set(m)
    # The per-step curves, written by dvclive while training ran.
    steps = live_series(tmp_path / "live", "loss")
    assert steps["step"].to_list() == [1, 2]
    assert m["final_loss"] == pytest.approx(steps["loss"][-1])
    assert live_series(tmp_path / "live", "rewards/accuracies")["step"].to_list() == [1, 2]
    assert len(m) <= 12, m  # headline numbers only; the series live in the plot file
    # The live summary (a declared metric) keeps the headline series; the plots keep all.
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert set(summary) == {"train", "eval", "step"}, summary
    assert set(summary["train"]) == {"loss", "rewards"}
    assert set(summary["train"]["rewards"]) == {"accuracies", "margins"}
    assert live_series(tmp_path / "live", "grad_norm")["step"].to_list() == [1, 2]
    card = read_card(tmp_path / "ckpt")
    assert card["name"].endswith(f"+{loss}")
    assert card["weights_sha256"] != read_card(tiny_stage_model)["weights_sha256"]

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in QUESTIONS[:4]))
    r = run_stage(
        "evaluate",
        "--base-dir",
        tiny_stage_model,
        "--trained-dir",
        tmp_path / "ckpt",
        "--prompts",
        prompts,
        "--out",
        tmp_path / "eval.json",
        "--samples",
        tmp_path / "samples.jsonl",
        "--details",
        tmp_path / "details.json",
        "--plots",
        tmp_path / "outcomes.csv",
        "--directions",
        tiny_stage_directions,
        "--alpaca-eval",
        tmp_path / "alpaca",
        "--params",
        params,
    )
    assert r.exit_code == 0, r.output
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["n"] == 4 and 0.0 <= ev["win_rate"] <= 1.0 and 0.0 <= ev["lc_win_rate"] <= 1.0
    assert abs(ev["strict_win_rate"] + ev["tie_rate"] + ev["loss_rate"] - 1.0) < 1e-9
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 2
    # The tiny starting model ends every answer at once: no answer token to re-read, so
    # the shift is reported as missing (not 0) and no criterion counts as moved.
    details = json.loads((tmp_path / "details.json").read_text())
    assert details["direction_shift"]["criteria"]["honesty"]["n"] == 0
    assert ev["direction_shift_honesty"] is None and ev["criteria_moved"] == 0
    # Both models' answers in AlpacaEval's format, one row per prompt, in prompt order.
    model_out = json.loads((tmp_path / "alpaca" / "model_outputs.json").read_text())
    reference = json.loads((tmp_path / "alpaca" / "reference_outputs.json").read_text())
    assert [x["instruction"] for x in model_out] == QUESTIONS[:4]
    assert [x["instruction"] for x in reference] == QUESTIONS[:4]
    assert set(model_out[0]) == {"instruction", "output", "generator"}
    assert model_out[0]["generator"] != reference[0]["generator"]
    samples = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [x["trained"] for x in samples] == [x["output"] for x in model_out[:2]]


def test_pairs_with_empty_text_are_refused(
    tiny_stage_model: Path, tmp_path: Path, write_params: Callable[..., Path]
) -> None:
    bad = _pairs_file(tmp_path / "bad.parquet", [("Hi", "Hello!", "", "train")])
    r = _train(tiny_stage_model, bad, write_params({"train": TRAIN}), tmp_path)
    assert r.exit_code == 2 and "row 1: 'rejected' is empty" in r.output, r.output
    assert not (tmp_path / "ckpt").exists()


def test_missing_checkpoint_and_bad_prompt_files(
    tiny_stage_model: Path,
    tiny_stage_directions: Path,
    tmp_path: Path,
    write_params: Callable[..., Path],
) -> None:
    params = write_params()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"instruction": "Hi"}\n')

    def evaluate(trained: Path, prompt_file: Path) -> Any:
        return run_stage(
            "evaluate",
            "--base-dir",
            tiny_stage_model,
            "--trained-dir",
            trained,
            "--prompts",
            prompt_file,
            "--out",
            tmp_path / "e.json",
            "--samples",
            tmp_path / "s.jsonl",
            "--details",
            tmp_path / "details.json",
            "--plots",
            tmp_path / "o.csv",
            "--directions",
            tiny_stage_directions,
            "--alpaca-eval",
            tmp_path / "alpaca",
            "--params",
            params,
        )

    r = evaluate(tmp_path / "nope", prompts)
    assert r.exit_code == 2 and "model directory not found" in r.output, r.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = evaluate(tiny_stage_model, empty)
    assert r.exit_code == 2 and "holds no instructions" in r.output, r.output
    nocol = tmp_path / "nocol.parquet"
    pl.DataFrame({"text": ["x"]}).write_parquet(nocol)
    r = evaluate(tiny_stage_model, nocol)
    assert r.exit_code == 2 and "no 'instruction' column" in r.output, r.output
    assert not (tmp_path / "e.json").exists()


def test_judge_without_chat_template_is_refused(
    tiny_stage_model: Path,
    tiny_stage_directions: Path,
    tmp_path: Path,
    write_params: Callable[..., Path],
) -> None:
    plain = build_tiny_model(tmp_path / "plain", chat_template=None)
    params = write_params({"evaluate": {"judge": str(plain), "max_new_tokens": 4}})
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"instruction": "Hi"}\n')
    r = run_stage(
        "evaluate",
        "--base-dir",
        tiny_stage_model,
        "--trained-dir",
        tiny_stage_model,
        "--prompts",
        prompts,
        "--out",
        tmp_path / "e.json",
        "--samples",
        tmp_path / "s.jsonl",
        "--details",
        tmp_path / "details.json",
        "--plots",
        tmp_path / "o.csv",
        "--directions",
        tiny_stage_directions,
        "--alpaca-eval",
        tmp_path / "alpaca",
        "--params",
        params,
    )
    assert r.exit_code == 2 and "has no chat template" in r.output, r.output
    assert not (tmp_path / "e.json").exists()


def test_pair_schema_is_trainable(pairs: Path) -> None:
    from icon2.core.tables import read_pairs
    from icon2.train.data import to_datasets

    train, val = to_datasets(read_pairs(pairs))
    assert len(train) == 6 and val is not None and len(val) == 2
    assert set(PAIR_SCHEMA) >= {"prompt", "chosen", "rejected", "split"}


def test_spa_iteration_self_annotates_and_trains(
    tiny_stage_model: Path, pairs: Path, tmp_path: Path, write_params: Callable[..., Path]
) -> None:
    from icon2.core.io import read_provenance
    from icon2.model.logprobs import response_logps

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in QUESTIONS * 2))
    # π_0 = a DPO step away from π_init, so implicit rewards are not all zero.
    gentle = {"train": {**TRAIN, "learning_rate": 1e-4}}
    assert _train(tiny_stage_model, pairs, write_params(gentle), tmp_path).exit_code == 0
    previous = tmp_path / "ckpt"
    params = write_params(
        {
            "train": TRAIN,
            "spa": {
                "iterations": {"1": {"previous": str(previous), "lam": 0.5}},
                "prompts_per_iteration": 16,
                "max_new_tokens": 64,
                "temperature": 1.0,
            },
        }
    )
    r = run_stage(
        "spa",
        "--iteration",
        "1",
        "--init-dir",
        tiny_stage_model,
        "--previous",
        previous,
        "--prompts",
        prompts,
        "--out",
        tmp_path / "it1",
        "--params",
        params,
    )
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "it1" / "metrics.json").read_text())
    annotated = pl.read_parquet(tmp_path / "it1" / "pairs.parquet")
    assert m["pairs"] == annotated.height >= 1 and m["tied_rewards"] == 0
    # Every truncated answer is trained, without an end-of-turn token (tests/train/test_data.py).
    cut = sum(int((annotated[f"{s}_finish"] == "length").sum()) for s in ("chosen", "rejected"))
    assert m["truncated_trained_without_eot"] == m["truncated_responses"] == cut
    assert read_provenance(tmp_path / "it1" / "pairs.parquet")["lam"] == 0.5
    # Labels follow the implicit reward: chosen never has the lower reward.
    assert (annotated["reward_chosen"] > annotated["reward_rejected"]).all()
    assert read_provenance(tmp_path / "it1" / "pairs.parquet")["iteration"] == 1
    assert read_card(tmp_path / "it1" / "model")["name"].endswith("+spa1")
    _check_stored_rewards(annotated, previous, tiny_stage_model, write_params)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_stage_model).eval()
    tok = AutoTokenizer.from_pretrained(tiny_stage_model)
    lp, n = response_logps(model, tok, ["Hi"], ["Hello there"], batch_size=1)
    lp2, _ = response_logps(model, tok, ["Hi", "Bye"], ["Hello there", "See you"], batch_size=2)
    assert int(n[0]) == len(tok("Hello there", add_special_tokens=False)["input_ids"])
    assert abs(float(lp[0]) - float(lp2[0])) < 1e-4 and float(lp[0]) < 0


def _check_stored_rewards(
    table: pl.DataFrame, previous: Path, init: Path, write_params: Callable[..., Path]
) -> None:
    """Eq. 7 recomputed without icon2: a plain forward of each model on the exact text the
    answers were sampled from (the params' system turn, the tiny template by hand) plus the
    answer, with the end-of-turn token only where the answer ended (finish = "stop")."""
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    system = yaml.safe_load(write_params().read_text())["base"]["system_prompt"]
    assert system, "the default params give answers a system turn; the check needs one"
    tok = AutoTokenizer.from_pretrained(init)
    models = [AutoModelForCausalLM.from_pretrained(d).eval() for d in (previous, init)]
    eot = tok.convert_tokens_to_ids("<|eot|>")
    checked = {"stop": 0, "length": 0}
    for row in table.iter_rows(named=True):
        assert row["prompt"][0] == {"role": "system", "content": system}
        user = row["prompt"][-1]["content"]
        prompt = f"<|bos|><|system|>{system}<|eot|><|user|>{user}<|eot|><|assistant|>"
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        for side in ("chosen", "rejected"):
            answer = row[side][0]["content"]
            ended = row[f"{side}_finish"] == "stop"
            y_ids = tok(answer, add_special_tokens=False)["input_ids"] + ([eot] if ended else [])
            ids = torch.tensor([p_ids + y_ids])
            logps = []
            with torch.no_grad():
                for m in models:
                    logp = torch.log_softmax(m(input_ids=ids).logits[0, :-1].double(), -1)
                    tok_lp = logp.gather(-1, ids[0, 1:, None])[:, 0]
                    logps.append(float(tok_lp[len(p_ids) - 1 :].sum()))
            reward = 0.1 * (logps[0] - logps[1])  # spa.beta = 0.1, spa.length_penalty = 0
            assert row[f"reward_{side}"] == pytest.approx(reward, abs=2e-4), (side, answer)
            checked[row[f"{side}_finish"]] += 1
    assert sum(checked.values()) == 2 * table.height


@pytest.mark.parametrize("loss", ["dpo", "dro"])
def test_precomputed_reference_loads_one_model(
    tiny_stage_model: Path,
    pairs: Path,
    tmp_path: Path,
    write_params: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    loss: str,
) -> None:
    import icon2.stage

    loads: list[Path] = []
    real = icon2.stage.load_model

    def counting(model_dir: Path, p: Any, **kwargs: Any) -> Any:
        loads.append(model_dir)
        return real(model_dir, p, **kwargs)

    monkeypatch.setattr(icon2.stage, "load_model", counting)
    train = {**TRAIN, "loss": loss, "precompute_ref_log_probs": True}
    r = _train(tiny_stage_model, pairs, write_params({"train": train}), tmp_path)
    assert r.exit_code == 0, r.output
    assert loads == [tiny_stage_model]  # the policy only: no reference model in memory
    assert json.loads((tmp_path / "train.json").read_text())["optimizer_steps"] == 2


@pytest.mark.parametrize("shipped", ["params.yaml", "params.gpu.yaml"])
def test_an_update_at_the_shipped_learning_rate_reaches_the_weights(
    tiny_stage_model: Path,
    pairs: Path,
    tmp_path: Path,
    write_params: Callable[..., Path],
    shipped: str,
) -> None:
    """One optimizer step at the shipped file's learning rate, with its ``base.dtype``
    (bfloat16 in params.gpu.yaml), changes the saved weights: the policy trains on fp32
    masters. In bf16 the same step is lost to rounding, which the first lines show."""
    from safetensors.torch import load_file

    base = yaml.safe_load((REPO / shipped).read_text())
    lr = float(base["train"]["learning_rate"])
    w = torch.full((4,), 0.02, dtype=torch.bfloat16)
    assert torch.equal(w + lr, w)  # a bf16 policy would not move (half its last bit: 6e-5)
    train = {
        "loss": "dpo",
        "precision": "fp32",
        "max_steps": 1,
        "learning_rate": lr,
        "lr_scheduler_type": "constant",
        "warmup_ratio": 0.0,
        "max_length": 64,
        "logging_steps": 1,
    }
    params = write_params({"base": {"dtype": base["base"]["dtype"]}, "train": train})
    r = _train(tiny_stage_model, pairs, params, tmp_path)
    assert r.exit_code == 0, r.output
    before = load_file(tiny_stage_model / "model.safetensors")
    after = load_file(tmp_path / "ckpt" / "model.safetensors")
    moved = [
        # the start in the saved dtype: a bf16 save of untouched weights equals bf16(before)
        (after[k] != before[k].to(after[k].dtype)).float().mean().item()
        for k in before
        if k in after and "layers.0.mlp" in k
    ]
    assert moved and min(moved) > 0.5, moved
