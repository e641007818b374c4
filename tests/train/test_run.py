"""The training entry points the stages share: reference choice, train-and-gather, save,
metrics."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from icon2.core.io import weights_hash
from icon2.core.params import TrainParams
from icon2.model.loading import MODEL_CARD
from icon2.train.run import (
    Trained,
    TrainResult,
    curve_metrics,
    needs_reference,
    resolve_packing,
    run_record,
    train,
    train_and_gather,
    train_metrics,
)

PAIRS = [
    {
        "prompt": [{"role": "user", "content": q}],
        "chosen": [{"role": "assistant", "content": f"A careful answer to: {q}"}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }
    for q in ("What is 2 + 2?", "Name a color.", "Say hello.", "Give me a tip.")
]
PARENT = {
    "name": "tiny",
    "num_layers": 3,
    "hidden_size": 64,
    "dtype": "float32",
    "revision": None,
    "weights_sha256": "0" * 64,
}


@pytest.mark.parametrize(
    ("loss", "precompute", "needed"),
    [("dpo", False, True), ("dpo", True, False), ("dro", True, False), ("spa", True, True)],
)
def test_needs_reference(loss: str, precompute: bool, needed: bool) -> None:
    tp = TrainParams.model_validate({"loss": loss, "precompute_ref_log_probs": precompute})
    assert needs_reference(tp) is needed


def _result(history: list[dict[str, Any]], steps: int, seconds: float) -> TrainResult:
    state = SimpleNamespace(log_history=history, global_step=steps)
    return TrainResult(SimpleNamespace(state=state, variant="dpo"), seconds)  # type: ignore[arg-type]


def test_metrics_of_a_run() -> None:
    history = [
        {"step": 1, "loss": 0.7, "rewards/accuracies": 0.5},
        {"step": 2, "loss": 0.6, "rewards/accuracies": 1.0},
    ]
    result = _result(history, 2, 1.23456)
    curves = curve_metrics(result)
    assert curves["final_loss"] == 0.6 and curves["final_reward_accuracy"] == 1.0
    train = datasets.Dataset.from_list(PAIRS)
    metrics = train_metrics(result, train, None)
    assert metrics == {
        "train_pairs": 4,
        "validation_pairs": 0,
        "optimizer_steps": 2,
        "train_seconds": 1.23,
        **curves,
    }
    assert train_metrics(result, train, train)["validation_pairs"] == 4


def test_train_and_gather_then_save(tiny_model_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tp = TrainParams.model_validate(
        {"max_steps": 1, "per_device_train_batch_size": 2, "max_length": 64}
    )
    done = train_and_gather(
        tp,
        policy=policy,
        ref=ref,
        tokenizer=tok,
        train_dataset=datasets.Dataset.from_list(PAIRS),
        seed=0,
    )
    assert done is not None  # one process: the main one
    assert done.result.steps == 1 and done.model is policy and done.state is not None
    out = tmp_path / "ckpt"
    card = done.save(out, parent=PARENT, name="tiny+dpo", extra={"note": "x"})
    assert json.loads((out / MODEL_CARD).read_text()) == card
    assert card["name"] == "tiny+dpo" and card["parent"] == "tiny" and card["note"] == "x"
    assert card["weights_sha256"] == weights_hash(out)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # written atomically
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for name, value in reloaded.state_dict().items():
        torch.testing.assert_close(value, policy.state_dict()[name])


def test_trained_save_without_gathered_state(tiny_model: Any, tmp_path: Path) -> None:
    model, tok = tiny_model
    done = Trained(_result([], 0, 0.0), model, tok, None)
    card = done.save(tmp_path / "m", parent=PARENT, name="copy", extra={})
    assert card["kind"] == "trained" and (tmp_path / "m" / MODEL_CARD).is_file()


@pytest.mark.parametrize(
    ("requested", "device", "value"),
    [("auto", "cpu", "on"), ("auto", "cuda", "off"), (True, "cuda", "on"), (False, "cpu", "off")],
)
def test_resolve_packing(requested: bool | str, device: str, value: str) -> None:
    resolved = resolve_packing(requested, device)  # type: ignore[arg-type]
    assert resolved.value == value and resolved.key == "train.packing"


# Answers of different lengths and a shared first answer word: padding and a common prefix
# longer than the prompt, both of which packing removes.
UNEVEN = [
    {
        "prompt": [{"role": "user", "content": q}],
        "chosen": [{"role": "assistant", "content": f"Sure. A careful answer to: {q} " * n}],
        "rejected": [{"role": "assistant", "content": "Sure." if n % 2 else "No."}],
    }
    for n, q in enumerate(("What is 2 + 2?", "Name a color.", "Say hello.", "A tip?"), start=1)
]


@pytest.mark.parametrize("loss", ["dpo", "spa", "dro"])
def test_packed_training_follows_the_padded_run(tiny_model_dir: Path, loss: str) -> None:
    runs = {}
    for packing in (False, True):
        policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        tp = TrainParams.model_validate(
            {
                "loss": loss,
                "max_steps": 4,
                "per_device_train_batch_size": 2,
                "max_length": 128,
                "learning_rate": 1e-4,
                "precision": "fp32",  # bf16 rounding would differ between the two layouts
                "packing": packing,
                "dro": {"warmup_fraction": 0.25},
            }
        )
        result = train(
            tp,
            policy=policy,
            ref=ref,
            tokenizer=tok,
            train_dataset=datasets.Dataset.from_list(UNEVEN),
            seed=0,
        )
        losses = [h["loss"] for h in result.history if "loss" in h]
        runs[packing] = (losses, policy.state_dict(), result)
    (padded, padded_weights, plain), (packed, packed_weights, result) = runs[False], runs[True]
    assert len(packed) == len(padded) == 4
    assert padded[-1] != padded[0]  # the run moved
    assert packed == pytest.approx(padded, rel=1e-4, abs=1e-5)
    for name, value in padded_weights.items():
        torch.testing.assert_close(packed_weights[name], value, rtol=1e-3, atol=1e-5)
    record = run_record(result)["packing"]
    assert record["value"] == "on" and 0.3 < record["computed_fraction"] < 0.9
    assert run_record(plain)["packing"] == {
        "requested": "false",
        "value": "off",
        "reason": "set in params",
    }


def test_no_packing_unless_both_models_can_pack(tiny_model_dir: Path) -> None:
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tp = TrainParams.model_validate({"max_steps": 1, "packing": True, "max_length": 64})
    result = train(
        tp,
        policy=policy,
        ref=ref,
        tokenizer=tok,
        train_dataset=datasets.Dataset.from_list(PAIRS),
        seed=0,
    )
    record = run_record(result)["packing"]
    assert record["value"] == "off" and "SDPA" in record["reason"]
    assert "forward" not in vars(policy.base_model)  # the policy was left padded too
