"""Tests for icon2.train.config and icon2.train.trainer on a tiny random Llama (CPU, seconds).

The losses are checked against hand computations: sequences tokenised here with the chat
template, scored with ``icon2.train.losses.sequence_logps`` on full logits, combined with the pure
loss functions of ``icon2.train.losses`` and ``icon2.train.dro``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

import icon2.train.trainer as trainer_module
from icon2.core import precision
from icon2.core.params import SPAParams, TrainParams
from icon2.train.batches import PAIR_INDEX
from icon2.train.config import build_dpo_config, make_trainer
from icon2.train.dro import WorstCase
from icon2.train.losses import (
    ConfidenceWindow,
    dpo_loss,
    dpo_margin,
    dro_pair_losses,
    extrapolated_logps,
    sequence_logps,
    spa_loss,
)
from icon2.train.trainer import Icon2DPOTrainer

BETA = 0.5
QUESTIONS = [
    "What is the capital of France?",
    "How do I sort a list in Python?",
    "Is it safe to mix bleach and ammonia?",
    "Tell me a story about a dragon.",
    "Solve 12 * 7 + 3.",
    "Explain why the sky is blue.",
    "Give me three tips for sleeping better.",
    "Write a short poem about the sea.",
]
ANSWERS = [
    ("Paris is the capital of France.", "The capital is Lyon."),
    ("Use the sorted function or list.sort().", "You cannot sort lists."),
    ("No, it makes toxic gas; never do it.", "Yes, it is fine."),
    ("A dragon learned to cook soup for the village.", "No."),
    ("The answer is 87.", "The answer is 12."),
    ("Sunlight scatters off molecules in the air.", "Because it is blue."),
    ("Keep a schedule, avoid screens, rest.", "Drink coffee."),
    ("The sea and the wind and the light of the morning.", "Sea."),
]


def _pair(question: str, chosen: str, rejected: str) -> dict[str, Any]:
    return {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


PAIRS = [_pair(q, c, r) for q, (c, r) in zip(QUESTIONS, ANSWERS, strict=True)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # The tiny model gains nothing from intra-op threads, and when other processes share the
    # cores, spinning worker threads make each step an order of magnitude slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _models(model_dir: Path, perturb: bool = True) -> tuple[Any, Any, Any]:
    """Policy, reference and tokenizer; by default the policy is perturbed so that Δ != 0
    (tests of the loss arithmetic); ``perturb=False`` is the state a real run starts in."""
    policy = AutoModelForCausalLM.from_pretrained(model_dir)
    ref = AutoModelForCausalLM.from_pretrained(model_dir)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters() if perturb else []:
            p.add_(0.03 * torch.randn(p.shape, generator=gen))
    return policy, ref, AutoTokenizer.from_pretrained(model_dir)


def _make(
    model_dir: Path,
    tmp_path: Path,
    pairs: list[dict[str, Any]] = PAIRS,
    eval_pairs: list[dict[str, Any]] | None = None,
    perturb: bool = True,
    **train: Any,
) -> Icon2DPOTrainer:
    policy, ref, tok = _models(model_dir, perturb)
    # The hand computations below are fp32; the default (bf16 mixed precision) is checked
    # against them with a bf16 tolerance in test_bf16_step_loss_is_near_hand_dpo.
    base = {"beta": BETA, "max_steps": 1, "learning_rate": 1e-9, "precision": "fp32"}
    tp = TrainParams.model_validate(base | train)
    return make_trainer(
        tp,
        model=policy,
        ref_model=ref,
        tokenizer=tok,
        train_dataset=datasets.Dataset.from_list(pairs),
        eval_dataset=None if eval_pairs is None else datasets.Dataset.from_list(eval_pairs),
        output_dir=tmp_path / "out",
        seed=0,
    )


def _hand_logps(model: Any, tok: Any, pairs: list[dict[str, Any]]) -> torch.Tensor:
    """``[N, 2]`` (chosen, rejected) sequence log-probs, one unpadded sequence at a time."""
    out = torch.zeros(len(pairs), 2)
    with torch.no_grad():
        for i, pair in enumerate(pairs):
            prompt = tok.apply_chat_template(
                pair["prompt"], tokenize=False, add_generation_prompt=True
            )
            prompt_ids = tok(prompt, add_special_tokens=False).input_ids
            for j, side in enumerate(("chosen", "rejected")):
                full = tok.apply_chat_template(pair["prompt"] + pair[side], tokenize=False)
                ids = tok(full, add_special_tokens=False).input_ids
                assert ids[: len(prompt_ids)] == prompt_ids
                mask = torch.zeros(1, len(ids))
                mask[0, len(prompt_ids) :] = 1
                ids_t = torch.tensor([ids])
                logits = model(ids_t).logits
                out[i, j] = sequence_logps(logits[:, :-1], ids_t[:, 1:], mask[:, 1:])[0]
    return out


def _hand_logits(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _batch(trainer: Icon2DPOTrainer, rows: list[int]) -> dict[str, Any]:
    """A collated batch of the trainer's (tokenised) training rows, as the training loop sees it."""
    examples = [trainer.train_dataset[i] for i in rows]
    return dict(trainer._prepare_inputs(trainer.data_collator(examples)))


def test_params_validate_and_name_fields() -> None:
    assert TrainParams().loss == "dpo" and TrainParams().dro.support_min == 0.05
    for bad, field in [
        ({"beta": 0.0}, "beta"),
        ({"loss": "ipo"}, "loss"),
        ({"max_steps": 0}, "max_steps"),
        ({"max_length": 8}, "max_length"),
        ({"lr_scheduler_type": "cosinus"}, "lr_scheduler_type"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"spa": {"k_percent": 100}}, "spa.k_percent"),
        ({"dro": {"support_min": 1.0}}, "dro.support_min"),
        ({"dro": {"resolve_every": -1}}, "dro.resolve_every"),
        ({"epochs": 2}, "epochs"),
    ]:
        with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
            TrainParams.model_validate(bad)
    with pytest.raises(ValidationError):
        TrainParams().beta = 1.0  # type: ignore[misc]  # frozen


def test_build_dpo_config_maps_fields(tmp_path: Path) -> None:
    tp = TrainParams(
        beta=0.2,
        learning_rate=1e-5,
        num_train_epochs=2,
        per_device_train_batch_size=3,
        per_device_eval_batch_size=5,
        gradient_accumulation_steps=2,
        max_length=128,
        lr_scheduler_type="linear",
        warmup_ratio=0.25,
        logging_steps=3,
        precompute_ref_log_probs=True,
        precision="bf16",
    )
    cfg = build_dpo_config(tp, tmp_path, seed=7)
    assert cfg.loss_type == ["sigmoid"] and cfg.beta == 0.2 and cfg.learning_rate == 1e-5
    assert cfg.num_train_epochs == 2 and cfg.max_steps == -1 and cfg.seed == 7
    assert cfg.per_device_train_batch_size == 3 and cfg.per_device_eval_batch_size == 5
    assert cfg.gradient_accumulation_steps == 2 and cfg.max_length == 128
    assert cfg.lr_scheduler_type == "linear" and cfg.logging_steps == 3
    assert cfg.get_warmup_steps(100) == 25  # the ratio survives transformers 5's warmup_steps
    # bf16 mixed precision; fp32 turns both flags off (auto: tests/core/test_precision.py).
    assert cfg.bf16 and not cfg.fp16 and not cfg.gradient_checkpointing
    assert cfg.eval_strategy == "no" and cfg.save_strategy == "no" and cfg.report_to == []
    assert cfg.use_cpu == (not torch.cuda.is_available()) and cfg.dataloader_num_workers == 0
    assert cfg.precompute_ref_log_probs
    fp32 = build_dpo_config(tp.model_copy(update={"precision": "fp32"}), tmp_path, seed=0)
    assert not fp32.bf16 and not fp32.fp16
    stepped = build_dpo_config(tp.model_copy(update={"eval_steps": 4}), tmp_path, seed=0)
    assert stepped.eval_strategy == "steps" and stepped.eval_steps == 4
    # SPA needs reference logits in the step, so precomputed log-probs are switched off.
    spa = build_dpo_config(tp.model_copy(update={"loss": "spa"}), tmp_path, seed=0)
    assert not spa.precompute_ref_log_probs


def test_dpo_step_loss_is_hand_dpo(tiny_model_dir: Path, tmp_path: Path) -> None:
    trainer = _make(tiny_model_dir, tmp_path, loss="dpo", per_device_train_batch_size=8)
    assert trainer.variant == "dpo"
    tok = trainer.processing_class
    pol = _hand_logps(trainer.model, tok, PAIRS)
    ref = _hand_logps(trainer.ref_model, tok, PAIRS)
    losses, _, _ = dpo_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], BETA)
    assert losses.std() > 1e-3  # the perturbed policy makes the pairs differ
    trainer.train()  # one step over all 8 pairs: the logged loss is taken before the update
    first = trainer.state.log_history[0]
    assert first["step"] == 1
    assert first["loss"] == pytest.approx(losses.mean().item(), abs=1e-5)
    assert trainer.step_timing.steps == 1 and trainer.train_step_seconds > 0


def test_bf16_step_loss_is_near_hand_dpo(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The default precision (bf16 autocast, fp32 weights) logs the fp32 hand loss to
    within bf16's resolution, and trains the fp32 weights."""
    assert TrainParams().precision == "auto"  # bf16 where the device computes it natively
    trainer = _make(
        tiny_model_dir, tmp_path, loss="dpo", per_device_train_batch_size=8, precision="bf16"
    )
    tok = trainer.processing_class
    pol = _hand_logps(trainer.model, tok, PAIRS)
    ref = _hand_logps(trainer.ref_model, tok, PAIRS)
    losses, _, _ = dpo_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], BETA)
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["loss"] == pytest.approx(losses.mean().item(), rel=2e-2)
    assert first["loss"] != pytest.approx(losses.mean().item(), abs=1e-7)  # autocast ran
    assert next(trainer.model.parameters()).dtype == torch.float32


def test_spa_loss_is_eq10_with_extrapolated_confidence(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    spa = {"alpha": 0.3, "k_percent": 30, "window": 50, "lam": 0.5, "warmup_fraction": 0.2}
    trainer = _make(tiny_model_dir, tmp_path, loss="spa", spa=spa)
    batch = _batch(trainer, [0, 1, 2, 3])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)

    labels, mask = batch["input_ids"][:, 1:], batch["completion_mask"][:, 1:]
    pol_logits = _hand_logits(trainer.model, batch)[:, :-1]
    ref_logits = _hand_logits(trainer.ref_model, batch)[:, :-1]
    pol_w, pol_l = sequence_logps(pol_logits, labels, mask).chunk(2)
    ref_w, ref_l = sequence_logps(ref_logits, labels, mask).chunk(2)
    ext_w, ext_l = extrapolated_logps(pol_logits, ref_logits, labels, mask, 0.5).chunk(2)
    delta = dpo_margin(pol_w, pol_l, ref_w, ref_l, BETA)
    conf = torch.sigmoid(dpo_margin(ext_w, ext_l, ref_w, ref_l, BETA))
    # The extrapolated model is a different detector than the policy itself.
    assert not torch.allclose(conf, torch.sigmoid(delta))
    expected, z = spa_loss(delta, conf, ConfidenceWindow(50, 30), alpha=0.3, active=True)
    assert z.sum() == 1  # 30th percentile of 4 values flags exactly the lowest one
    torch.testing.assert_close(loss.detach(), expected.mean())
    assert not torch.allclose(expected.mean(), -F.logsigmoid(delta).mean())
    assert trainer._metrics["train"]["spa/flagged_fraction"] == [0.25]

    # In evaluation, and with alpha = 0 or during the warm-up, SPA is TRL's DPO loss.
    trainer.model.eval()
    dpo = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(dpo, -F.logsigmoid(delta).mean())
    trainer.model.train()
    trainer.spa_params = SPAParams(alpha=0.0, k_percent=30)
    torch.testing.assert_close(trainer.compute_loss(trainer.model, batch).detach(), dpo)
    trainer.spa_params = SPAParams(alpha=0.3, k_percent=30, warmup_fraction=0.2)
    trainer.state.max_steps, trainer.state.global_step = 10, 1  # step 1 < 0.2 * 10
    torch.testing.assert_close(trainer.compute_loss(trainer.model, batch).detach(), dpo)
    assert trainer._metrics["train"]["spa/active"][-1] == 0.0


def test_spa_and_dro_train_and_log_metrics(tiny_model_dir: Path, tmp_path: Path) -> None:
    spa = _make(
        tiny_model_dir,
        tmp_path,
        eval_pairs=PAIRS[:4],
        loss="spa",
        max_steps=2,
        spa={"warmup_fraction": 0.5},
    )
    spa.train()
    logs = [h for h in spa.state.log_history if "loss" in h]
    assert [h["spa/active"] for h in logs] == [0.0, 1.0]
    assert logs[0]["spa/flagged_fraction"] == 0.0 and "rewards/margins" in logs[0]
    # eval_steps = None: one evaluation after the last step, with TRL's plain DPO loss.
    evals = [h for h in spa.state.log_history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [2] and "eval_spa/flagged_fraction" not in evals[0]

    dro = _make(
        tiny_model_dir,
        tmp_path,
        loss="dro",
        max_steps=2,
        dro={"resolve_every": 1, "warmup_fraction": 0.0},
    )
    dro.train()
    logs = [h for h in dro.state.log_history if "loss" in h]
    assert len(logs) == 2 and dro.dro.solves == 2 and dro.step_timing.steps == 2
    for h in logs:
        assert h["loss"] == pytest.approx(h["dro/weighted_loss"])
        # The budget goes to the least confident pairs, which need not be in this batch.
        assert h["dro/mean_shift"] >= 0 and h["dro/solve_seconds"] > 0
    assert dro.dro.q is not None and dro.dro.q.sum() > 0
    assert 0 < dro.dro.solve_seconds < dro.train_step_seconds


def test_dro_with_eps_zero_is_dpo(tiny_model_dir: Path, tmp_path: Path) -> None:
    trainer = _make(tiny_model_dir, tmp_path, loss="dro", dro={"eps": 0.0, "warmup_fraction": 0.0})
    batch = _batch(trainer, [6, 1, 3])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    assert trainer.dro.q is not None and np.all(trainer.dro.q == 0.0)
    trainer.model.eval()
    dpo = trainer.compute_loss(trainer.model, batch)
    # Same Δ up to the order of dpo_margin's float operations vs TRL's (last-ulp differences).
    torch.testing.assert_close(loss.detach(), dpo, rtol=1e-6, atol=1e-7)


def test_dro_weights_come_from_the_lp_by_pair_index(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[np.ndarray, dict[str, Any]]] = []
    solve = trainer_module.solve_in_groups

    def spy(xi: np.ndarray, *args: Any, **kwargs: Any) -> WorstCase:
        calls.append((xi.copy(), {"args": args, **kwargs}))
        return solve(xi, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "solve_in_groups", spy)
    # Pair 2's prompt alone exceeds max_length, so TRL drops it: indices are no longer positions.
    pairs = [*PAIRS[:2], _pair("zebra quokka " * 40, "Yes.", "No."), *PAIRS[2:]]
    dro = {
        "eps": 0.2,
        "group_size": 3,
        "support_min": 0.05,
        "resolve_every": 2,
        "warmup_fraction": 0.0,
    }
    trainer = _make(tiny_model_dir, tmp_path, pairs=pairs, loss="dro", max_length=64, dro=dro)
    assert trainer.train_dataset[PAIR_INDEX] == [0, 1, 3, 4, 5, 6, 7, 8]
    batch = _batch(trainer, [5, 2, 7, 0])
    index = batch[PAIR_INDEX].tolist()
    assert index == [6, 3, 8, 0]

    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    assert len(calls) == 1
    xi, kwargs = calls[0]
    assert kwargs["support_min"] == 0.05 and kwargs["args"][0] == 0.2 and kwargs["args"][2] == 3
    sol = trainer.dro.solution
    assert sol is not None and trainer.dro.alpha is not None and trainer.dro.q is not None
    assert trainer.dro.xi is not None and np.isnan(trainer.dro.xi[2])
    # The LP saw the pairs in ascending index order; each stored row is its pair's row.
    valid = [0, 1, 3, 4, 5, 6, 7, 8]
    np.testing.assert_array_equal(trainer.dro.xi[valid], xi)
    np.testing.assert_array_equal(trainer.dro.alpha[valid], sol.alpha)
    np.testing.assert_array_equal(trainer.dro.q[valid], sol.q)
    assert np.any(sol.q > 0)

    # ξ of a pair, recomputed independently, matches the value stored at its index.
    tok = trainer.processing_class
    raw = [pairs[i] for i in index]
    pol, ref = _hand_logps(trainer.model, tok, raw), _hand_logps(trainer.ref_model, tok, raw)
    delta = dpo_margin(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], BETA)
    np.testing.assert_allclose(trainer.dro.xi[index], torch.sigmoid(delta).numpy(), atol=1e-5)
    alpha = torch.from_numpy(trainer.dro.alpha[index])
    q = torch.from_numpy(trainer.dro.q[index])
    expected = dro_pair_losses(delta, alpha, q, support_min=0.05).mean()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)
    assert loss.item() > -F.logsigmoid(delta).mean().item()  # the worst case costs more

    trainer.compute_loss(trainer.model, batch)  # same optimizer step: no new solve
    trainer.state.global_step = 2  # resolve_every = 2 steps later
    trainer.compute_loss(trainer.model, batch)
    assert len(calls) == 2 and trainer.dro.solves == 2


def test_dro_default_warms_up_before_solving(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The state a default run starts in: step 0, policy = reference, Δ ≡ 0, every ξ = 1/2.

    With the default warm-up nothing is solved then (the LP would carry no information and
    HiGHS would return an arbitrary vertex); the first solve comes after plain-DPO steps have
    moved the policy, so the ξ it sees differ from pair to pair."""
    trainer = _make(
        tiny_model_dir, tmp_path, perturb=False, loss="dro", max_steps=6, learning_rate=5e-3
    )
    assert trainer.dro_params.warmup_fraction == TrainParams().dro.warmup_fraction > 0
    batch = _batch(trainer, [0, 1, 2])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)  # step 0: policy = reference
    assert trainer.dro.solves == 0 and trainer.dro.alpha is None
    torch.testing.assert_close(loss.detach(), torch.log(torch.tensor(2.0)))  # Δ ≡ 0
    trainer.model.eval()
    torch.testing.assert_close(loss.detach(), trainer.compute_loss(trainer.model, batch))
    trainer.model.train()
    trainer.train()
    assert trainer.dro.solves == 1
    assert trainer.dro.xi is not None and trainer.dro.weights is not None
    xi = trainer.dro.xi[~np.isnan(trainer.dro.xi)]
    assert np.ptp(xi) > 1e-4  # the solve saw pairs the policy already tells apart
    # More weight on the pairs the model finds most confusing (lowest ξ).
    assert trainer.dro.weight_confusion_corr is not None
    assert trainer.dro.weight_confusion_corr > 0


def test_build_dpo_config_resolves_auto_by_the_hardware(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """AVX2-only CPU: fp32 (no autocast); AMX CPU: bf16 autocast (the probe is mocked)."""
    monkeypatch.delenv(precision.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(precision, "_cpu_probe", lambda: (False, False, "AVX2"))
    slow = build_dpo_config(TrainParams(), tmp_path, seed=0)
    assert not slow.bf16 and not slow.fp16
    monkeypatch.setattr(precision, "_cpu_probe", lambda: (True, False, "AVX512"))
    fast = build_dpo_config(TrainParams(), tmp_path, seed=0)
    assert fast.bf16 and not fast.fp16
