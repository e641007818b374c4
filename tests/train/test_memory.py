"""The memory planner: parameter counts, sharding arithmetic, accelerate configs, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from icon2.core.configs import read_accelerate_config, read_config
from icon2.core.errors import InputError, ParamsError
from icon2.core.params import load_params
from icon2.train.memory import GIB, ModelShape, Setup, estimate
from icon2.train.memory_setup import check_choices, from_accelerate, setup_fields

from ..conftest import REPO, run_stage

# Meta-Llama-3-8B(-Instruct) config.json, the sizes that matter (8,030,261,248 parameters).
LLAMA3_8B: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
}
PAPER = {"precision": "bf16", "per_device_batch": 2, "max_length": 8192}


def test_llama3_8b_parameter_count_is_exact() -> None:
    assert ModelShape.from_config(LLAMA3_8B).params == 8_030_261_248


def test_tiny_model_count_matches_torch(tiny_model: Any, tiny_model_dir: Path) -> None:
    model, _ = tiny_model
    assert ModelShape.from_config(read_config(tiny_model_dir)).params == sum(
        p.numel() for p in model.parameters()
    )


def test_unsharded_8b_needs_16_bytes_per_parameter_plus_reference() -> None:
    plan = estimate(LLAMA3_8B, Setup(**PAPER))
    n = 8_030_261_248
    assert plan.terms["weights"] == plan.terms["gradients"] == plan.terms["reference"] == 2 * n
    assert plan.terms["optimizer"] == 12 * n  # fp32 master + two fp32 Adam moments
    assert not plan.fits


def test_zero3_on_8_gpus_shards_everything_and_fits() -> None:
    one = estimate(LLAMA3_8B, Setup(**PAPER))
    eight = estimate(LLAMA3_8B, Setup(**PAPER, sharding="zero3", gpus=8))
    for term in ("gradients", "optimizer", "reference"):
        assert eight.terms[term] == pytest.approx(one.terms[term] / 8)
    # Sharded weights plus the gathered working set (two of the largest unit, the embedding).
    assert eight.terms["weights"] > one.terms["weights"] / 8
    assert eight.terms["activations"] == one.terms["activations"]
    assert eight.fits and eight.total_gib < 40


def test_each_zero_stage_shards_more() -> None:
    totals = [
        estimate(LLAMA3_8B, Setup(**PAPER, sharding=s, gpus=8)).total_gib  # type: ignore[arg-type]
        for s in ("none", "zero1", "zero2", "zero3")
    ]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 4


def test_precomputed_reference_and_offload_drop_their_terms() -> None:
    plan = estimate(
        LLAMA3_8B, Setup(**PAPER, reference="precomputed", sharding="zero3", offload_optimizer=True)
    )
    assert plan.terms["reference"] == 0 and plan.terms["optimizer"] == 0


def test_checkpointing_and_spa_logits() -> None:
    on = estimate(LLAMA3_8B, Setup(**PAPER, gradient_checkpointing=True))
    off = estimate(LLAMA3_8B, Setup(**PAPER, gradient_checkpointing=False))
    assert on.terms["activations"] < off.terms["activations"] / 5
    assert on.terms["logits"] == 0  # dpo goes through TRL's fused LM head
    spa = estimate(LLAMA3_8B, Setup(**PAPER, loss="spa"))
    assert spa.terms["logits"] == 2 * 2 * 8192 * 128256 * (2 + 2 + 8)


def test_bad_setups_are_params_errors() -> None:
    with pytest.raises(ParamsError, match="spa"):
        Setup(loss="spa", reference="precomputed")
    with pytest.raises(ParamsError, match="zero3 or fsdp"):
        Setup(sharding="zero2", offload_params=True)
    with pytest.raises(ParamsError):
        Setup(gpus=0)


@pytest.mark.parametrize(
    ("name", "sharding"), [("ddp", "none"), ("fsdp", "fsdp"), ("zero3", "zero3")]
)
def test_shipped_accelerate_configs(name: str, sharding: str) -> None:
    fields = from_accelerate(read_accelerate_config(REPO / "configs/accelerate" / f"{name}.yaml"))
    assert fields["sharding"] == sharding and fields["gpus"] == 8
    assert fields["precision"] == "bf16"


def test_bad_accelerate_configs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_accelerate_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("distributed_type: [DEEPSPEED\n")
    with pytest.raises(InputError, match="not a valid accelerate config"):
        read_accelerate_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(InputError, match="no distributed_type"):
        read_accelerate_config(bad)
    with pytest.raises(InputError, match="TPU"):
        from_accelerate({"distributed_type": "TPU"})


def test_module_does_not_import_torch() -> None:
    code = "import sys, icon2.train.memory; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_plans_from_params_and_accelerate_config(tmp_path: Path, write_params: Any) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    params = write_params(
        {"train": {"per_device_train_batch_size": 2, "max_length": 8192, "precision": "bf16"}}
    )
    zero3 = REPO / "configs/accelerate/zero3.yaml"
    args = ["--model", tmp_path, "--params", params, "--checkpointing"]
    result = run_stage("memory", *args, "--accelerate-config", zero3)
    assert result.exit_code == 0, result.output
    assert "8.03B parameters" in result.output and "sharding zero3 over 8 GPU(s)" in result.output
    assert result.output.strip().endswith(": fits")
    single = run_stage("memory", *args, "--gpus", "1")
    assert "does NOT fit" in single.output


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    result = run_stage("memory", "--model", tmp_path, "--accelerate-config", tmp_path / "no.yaml")
    assert result.exit_code == 2
    assert "accelerate config file not found" in result.output
    result = run_stage("memory", "--model", tmp_path, "--sharding", "zero4")
    assert result.exit_code == 2 and "--sharding" in result.output


def test_total_is_sum_of_terms() -> None:
    plan = estimate(LLAMA3_8B, Setup())
    assert plan.total_gib * GIB == pytest.approx(sum(plan.terms.values()))


NOTHING_GIVEN: dict[str, Any] = dict.fromkeys(("gpus", "sharding", "reference", "loss"))


def test_setup_fields_precedence(write_params: Any) -> None:
    train = load_params(
        write_params({"train": {"loss": "dro", "precompute_ref_log_probs": True, "max_length": 64}})
    ).train
    fields = setup_fields(train, None, NOTHING_GIVEN, gpu_gib=40.0)
    assert fields["gpu_gib"] == 40.0 and fields["max_length"] == 64
    assert fields["loss"] == "dro" and fields["reference"] == "precomputed"
    assert "sharding" not in fields  # nothing decided it: Setup's default
    # The accelerate config overrides the params; the command line overrides both.
    zero3 = REPO / "configs/accelerate/zero3.yaml"
    fields = setup_fields(train, zero3, {**NOTHING_GIVEN, "gpus": 2}, gpu_gib=80.0)
    assert fields["sharding"] == "zero3" and fields["gpus"] == 2
    Setup(**fields)  # a valid plan


def test_setup_fields_spa_keeps_the_reference_model(write_params: Any) -> None:
    train = load_params(
        write_params({"train": {"loss": "dpo", "precompute_ref_log_probs": True}})
    ).train
    assert setup_fields(train, None, NOTHING_GIVEN, gpu_gib=80.0)["reference"] == "precomputed"
    given = {**NOTHING_GIVEN, "loss": "spa"}
    assert setup_fields(train, None, given, gpu_gib=80.0)["reference"] == "model"
    # An explicit --reference is kept (and Setup then refuses the combination).
    given = {**NOTHING_GIVEN, "loss": "spa", "reference": "precomputed"}
    fields = setup_fields(None, None, given, gpu_gib=80.0)
    assert fields["reference"] == "precomputed"
    with pytest.raises(ParamsError, match="spa"):
        Setup(**fields)


def test_setup_fields_checks_choices_and_the_named_accelerate_config(
    tmp_path: Path, write_params: Any
) -> None:
    with pytest.raises(ParamsError, match=r"--sharding: 'zero4' is not one of"):
        setup_fields(None, None, {"sharding": "zero4"}, gpu_gib=80.0)
    with pytest.raises(ParamsError, match=r"--optimizer: 'sgd'"):
        check_choices({"optimizer": "sgd"})
    check_choices({"gpus": 3, "optimizer": "adamw_16bit"})
    missing = tmp_path / "none.yaml"
    train = load_params(write_params({"train": {"accelerate_config": str(missing)}})).train
    with pytest.raises(InputError, match="accelerate config file not found"):
        setup_fields(train, None, NOTHING_GIVEN, gpu_gib=80.0)
