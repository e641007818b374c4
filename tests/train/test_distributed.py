"""Training under accelerate: config checks, single-process identities, and 2-process DDP
(gloo on CPU) against one process with the same global batch, for the dpo, spa and dro losses."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
import yaml

from icon2.core.errors import ParamsError
from icon2.core.tables import SPA_PAIR_SCHEMA
from icon2.steps.self_annotation import Annotation, merge_annotations
from icon2.train import distributed
from icon2.train.distributed import (
    GlobalConfidenceWindow,
    check_accelerate_config,
    cli_options,
    gather_confidences,
    rank_shard,
    solve_on_main,
)
from icon2.train.losses import ConfidenceWindow
from tests.conftest import REPO, run_stage
from tests.stages.test_train import QUESTIONS, _pairs_file, _train, live_series

# DDP with 2 processes; on a machine without CUDA the trainer runs it on gloo (use_cpu).
CPU_DDP = {
    **yaml.safe_load((REPO / "configs/accelerate/ddp.yaml").read_text()),
    "mixed_precision": "no",
    "num_processes": 2,
}


def _config(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump({**CPU_DDP, **changes}))
    return path


def test_bad_accelerate_configs_are_one_params_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ParamsError, match=r"train.accelerate_config: .*not found"):
        check_accelerate_config(tmp_path / "nope.yaml", "fp32")
    broken = tmp_path / "broken.yaml"
    broken.write_text("distributed_type: MULTI_GPU\nnum_processes: [2\n")
    with pytest.raises(ParamsError, match="not a valid accelerate config"):
        check_accelerate_config(broken, "fp32")
    with pytest.raises(ParamsError, match=r"mixed_precision: no, but train\.precision is bf16"):
        check_accelerate_config(_config(tmp_path), "bf16")
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: None)
    zero3 = REPO / "configs/accelerate/zero3.yaml"
    with pytest.raises(ParamsError, match="ZeRO-3, but deepspeed is not installed"):
        check_accelerate_config(zero3, "bf16")
    assert check_accelerate_config(_config(tmp_path), "fp32")["num_processes"] == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"machine_rank": 1}, r"machine_rank 1 is out of range for num_machines 1"),
        ({"num_machines": 2, "machine_rank": 2}, r"machine_rank 2 is out of range"),
        ({"num_processes": 3, "num_machines": 2}, r"num_processes 3 .* multiple of num_machines 2"),
        ({"num_processes": 0}, r"num_processes must be an integer >= 1, got 0"),
        ({"num_machines": "2"}, r"num_machines must be an integer >= 1, got '2'"),
        ({"num_machines": 2, "main_process_port": 29500}, r"need main_process_ip"),
        (
            {"num_machines": 2, "main_process_ip": "main.invalid", "main_process_port": 29500},
            r"main_process_ip 'main.invalid' cannot be reached",
        ),
    ],
)
def test_bad_machine_settings_are_one_params_error_before_a_launch(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ParamsError, match=r"train\.accelerate_config: .*" + message):
        check_accelerate_config(_config(tmp_path, **changes), "fp32")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("fsdp.yaml", "would silently train as plain DDP"),
        ("zero3.yaml", "train_batch_size is not equal to"),
    ],
)
def test_sharded_configs_are_refused_without_cuda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, why: str
) -> None:
    """FSDP and ZeRO-3 on a CPU-only machine: one error naming why, never a DDP run in their
    place (with 2 processes on gloo, fsdp.yaml trained as MULTI_CPU, i.e. DDP)."""
    config = yaml.safe_load((REPO / "configs/accelerate" / name).read_text())
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**config, "mixed_precision": "no", "num_processes": 2}))
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParamsError, match=r"needs CUDA GPUs: .*" + why) as info:
        check_accelerate_config(path, "fp32")
    assert str(info.value).startswith(f"train.accelerate_config: {path} selects ")
    assert "use configs/accelerate/ddp.yaml" in str(info.value)
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: True)
    distributed.check_sharding_device(yaml.safe_load(path.read_text()), path)  # a GPU machine
    distributed.check_sharding_device(CPU_DDP, path)  # DDP runs anywhere


def test_two_machines_over_loopback_pass_the_checks(tmp_path: Path) -> None:
    two = {"num_processes": 2, "num_machines": 2, "main_process_port": 29500}
    for rank in (0, 1):
        path = _config(tmp_path, **two, machine_rank=rank, main_process_ip="127.0.0.1")
        assert check_accelerate_config(path, "fp32")["machine_rank"] == rank


def test_one_process_helpers_are_identities() -> None:
    assert rank_shard(5) == [0, 1, 2, 3, 4] and rank_shard(0) == []
    index, xi = torch.arange(4).numpy(), torch.rand(4, dtype=torch.float64).numpy()
    got_index, got_xi = gather_confidences(index, xi)
    assert (got_index == index).all() and (got_xi == xi).all()
    assert solve_on_main(lambda: 42) == 42
    options = cli_options({"model_dir": Path("m"), "iteration": "2", "params": None})
    assert options == ["--model-dir", "m", "--iteration", "2"]
    ours, plain = GlobalConfidenceWindow(4, 30.0), ConfidenceWindow(4, 30.0)
    for batch in torch.rand(5, 3).unbind():
        assert torch.equal(ours.flags(batch), plain.flags(batch))
    ours.push(torch.tensor([0.5]))
    plain.push(torch.tensor([0.5]))
    assert ours.values == plain.values


def _annotation(gaps: list[float]) -> Annotation:
    msg = [{"role": "user", "content": "q"}]
    rows = [
        {
            "split": "train",
            "prompt": msg,
            "chosen": msg,
            "rejected": msg,
            "reward_chosen": g,
            "reward_rejected": 0.0,
            "chosen_finish": "stop",
            "rejected_finish": "length",
        }
        for g in gaps
    ]
    table = pl.DataFrame(rows, schema=SPA_PAIR_SCHEMA)
    counts = {
        "prompts": len(gaps) + 1,
        "pairs": len(gaps),
        "mean_reward_gap": sum(gaps) / len(gaps),
    }
    return Annotation(table, counts)


def test_spa_shards_merge_into_one_annotation() -> None:
    whole = _annotation([1.0, 2.0, 6.0])
    assert merge_annotations([whole]) is whole
    merged = merge_annotations([_annotation([1.0]), _annotation([2.0, 6.0])])
    assert merged.table.equals(whole.table)
    assert merged.counts == {"prompts": 5, "pairs": 3, "mean_reward_gap": 3.0}


def test_train_stage_rejects_a_bad_config_in_one_line(
    tiny_stage_model: Path, tmp_path: Path, write_params: Callable[..., Path]
) -> None:
    pairs = _pairs_file(
        tmp_path / "pairs.parquet", [(q, "Yes.", "No.", "train") for q in QUESTIONS]
    )
    params = write_params({"train": {"accelerate_config": str(tmp_path / "missing.yaml")}})
    result = _train(tiny_stage_model, pairs, params, tmp_path)
    assert result.exit_code == 2, result.output
    [line] = [x for x in result.output.splitlines() if x.strip()]
    assert line.startswith("error: train.accelerate_config: ") and "not found" in line
    assert not (tmp_path / "ckpt").exists()


def test_train_stage_checks_its_pairs_before_a_launch(
    tiny_stage_model: Path, tmp_path: Path, write_params: Callable[..., Path]
) -> None:
    """A bad pairs file under a 2-process config is one error from the parent, not one per
    rank (the ranks would each read it after `accelerate launch`)."""
    rows = [(q, "Same.", "Same.", "train") for q in QUESTIONS]
    pairs = _pairs_file(tmp_path / "pairs.parquet", rows)
    config = str(_config(tmp_path))  # valid: fp32 on both sides
    params = write_params({"train": {"precision": "fp32", "accelerate_config": config}})
    result = _train(tiny_stage_model, pairs, params, tmp_path)
    assert result.exit_code == 2, result.output
    [line] = [x for x in result.output.splitlines() if x.strip()]
    assert line.startswith(f"error: {pairs}: row 1: chosen and rejected are identical"), line
    assert not (tmp_path / "ckpt").exists()


TRAIN = {
    # fp32, as CPU_DDP (mixed_precision: no): one process and two agree to float reordering.
    "precision": "fp32",
    "max_steps": 4,
    "learning_rate": 1e-3,
    "lr_scheduler_type": "constant",
    "warmup_ratio": 0.0,
    "max_length": 64,
    "logging_steps": 1,
    # Refinement on from the start and a window of one global batch: each step flags the
    # less confident of its 2 pairs, which a per-rank window (1 pair) would not.
    "spa": {"window": 2, "k_percent": 30.0, "warmup_fraction": 0.0, "alpha": 0.5},
    "dro": {"eps": 0.1},
}


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["dpo", "spa", "dro"])
def test_two_process_ddp_matches_one_process(
    tiny_stage_model: Path, tmp_path: Path, write_params: Callable[..., Path], loss: str
) -> None:
    rows = [
        (q, f"A careful answer to: {q}", "No. " * (i + 1), "train") for i, q in enumerate(QUESTIONS)
    ]
    pairs = _pairs_file(tmp_path / "pairs.parquet", rows)
    runs = {}
    for name, batch, config in (("one", 2, None), ("ddp", 1, str(_config(tmp_path)))):
        train = {**TRAIN, "loss": loss, "per_device_train_batch_size": batch}
        params = write_params(
            {"train": {**train, "accelerate_config": config}}, name=f"{name}.yaml"
        )
        out = tmp_path / name
        result = _train(tiny_stage_model, pairs, params, out)
        assert result.exit_code == 0, result.output
        curves = {k: live_series(out / "live", k) for k in ("loss", "rewards/margins")}
        runs[name] = (curves, json.loads((out / "train.json").read_text()))
    (one, one_metrics), (ddp, ddp_metrics) = runs["one"], runs["ddp"]
    assert one["loss"]["step"].to_list() == ddp["loss"]["step"].to_list() == [1, 2, 3, 4]
    # The same global batch of 2 pairs per step: the same trajectory up to float reordering.
    for key, column in (("loss", "loss"), ("rewards/margins", "margins")):
        assert ddp[key][column].to_list() == pytest.approx(one[key][column].to_list(), abs=1e-4)
    # It trained: step 1 is logged before the first update (policy = reference, margin 0);
    # four steps at 1e-3 move it well above (0.9988 for spa on an AVX2 CPU, > 1 on AMX).
    margins = one["rewards/margins"]["margins"].to_list()
    assert margins[0] == pytest.approx(0.0, abs=1e-3) and margins[-1] > 0.5
    if loss == "spa":  # the window really flagged pairs (identical flags on both runs)
        flagged = [live_series(tmp_path / n / "live", "spa/flagged_fraction") for n in runs]
        # Step 1 (policy = reference) ties both pairs' confidence up to float noise: whether
        # one is flagged there depends on the CPU's kernels (AMX: no, AVX2: yes).
        one_flags, ddp_flags = (f["flagged_fraction"].to_list() for f in flagged)
        assert one_flags == ddp_flags and one_flags[1:] == [0.5, 0.5, 0.5]
    assert ddp_metrics["optimizer_steps"] == one_metrics["optimizer_steps"] == 4
    # How each run was spread, as its checkpoint's card records it (gloo DDP is MULTI_CPU).
    for name, spread in (
        ("one", {"distributed_type": "NO", "processes": 1}),
        ("ddp", {"distributed_type": "MULTI_CPU", "processes": 2}),
    ):
        card = json.loads((tmp_path / name / "ckpt" / "icon2_model.json").read_text())
        packing = card["run"].pop("packing")
        assert card["run"] == spread, name
        # On the CPU both runs trained on packed pairs (and so equal each other above).
        assert packing["value"] == "on" and 0 < packing["computed_fraction"] < 1, name
    # Only rank 0 wrote, and it wrote a whole checkpoint.
    assert (tmp_path / "ddp" / "ckpt" / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["ckpt", "live", "train.json"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_machines_over_loopback_match_one_process(
    tiny_stage_model: Path, tmp_path: Path, write_params: Callable[..., Path]
) -> None:
    """Two "machines" (machine_rank 0 and 1, one process each, rendezvous on 127.0.0.1) run
    the train stage side by side, as two hosts would; the loss trajectory equals one process
    at the same global batch, and only machine 0 writes."""
    rows = [
        (q, f"A careful answer to: {q}", "No. " * (i + 1), "train") for i, q in enumerate(QUESTIONS)
    ]
    pairs = _pairs_file(tmp_path / "pairs.parquet", rows)
    train = {**TRAIN, "loss": "dpo"}
    one = write_params({"train": {**train, "per_device_train_batch_size": 2}}, name="one.yaml")
    assert _train(tiny_stage_model, pairs, one, tmp_path / "one").exit_code == 0
    port, procs = _free_port(), []
    for rank in (0, 1):
        config = tmp_path / f"machine{rank}.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    **CPU_DDP,
                    "num_machines": 2,
                    "machine_rank": rank,
                    "main_process_ip": "127.0.0.1",
                    "main_process_port": port,
                }
            )
        )
        params = write_params(
            {
                "train": {
                    **train,
                    "per_device_train_batch_size": 1,
                    "accelerate_config": str(config),
                }
            },
            name=f"machine{rank}.params.yaml",
        )
        out = tmp_path / "two"
        args = ["--model-dir", tiny_stage_model, "--pairs", pairs, "--out", out / "ckpt"]
        args += ["--metrics", out / "train.json", "--live", out / "live", "--params", params]
        command = [sys.executable, str(REPO / "stages/train.py"), *map(str, args)]
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = [proc.communicate(timeout=600)[0].decode() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    for key, column in (("loss", "loss"), ("rewards/margins", "margins")):
        a = live_series(tmp_path / "one" / "live", key)[column].to_list()
        b = live_series(tmp_path / "two" / "live", key)[column].to_list()
        assert len(a) == 4 and b == pytest.approx(a, abs=1e-4)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["ckpt", "live", "train.json"]


@pytest.mark.slow
def test_spa_iteration_on_two_processes(
    tiny_stage_model: Path, tmp_path: Path, write_params: Callable[..., Path]
) -> None:
    """Each rank samples and labels half the prompts; all train on the gathered pairs; rank 0
    alone writes the iteration's outputs."""
    rows = [(q, f"A careful answer to: {q}", "No.", "train") for q in QUESTIONS]
    pairs = _pairs_file(tmp_path / "pairs.parquet", rows)
    assert _train(tiny_stage_model, pairs, write_params({"train": TRAIN}), tmp_path).exit_code == 0
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in QUESTIONS))
    spa = {
        "iterations": {"1": {"previous": str(tmp_path / "ckpt"), "lam": 0.5}},
        "prompts_per_iteration": 8,
        "max_new_tokens": 32,
        "temperature": 1.0,
    }
    config = str(_config(tmp_path))
    # Room for the default system prompt: TRL drops pairs whose prompt fills max_length.
    train = {**TRAIN, "max_length": 160, "accelerate_config": config}
    params = write_params({"train": train, "spa": spa})
    result = run_stage(
        "spa",
        *("--iteration", "1", "--init-dir", tiny_stage_model, "--previous", tmp_path / "ckpt"),
        *("--prompts", prompts, "--out", tmp_path / "it1", "--params", params),
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "it1" / "metrics.json").read_text())
    table = pl.read_parquet(tmp_path / "it1" / "pairs.parquet")
    assert metrics["pairs"] == table.height >= 2
    assert (table["reward_chosen"] >= table["reward_rejected"]).all()
    assert sorted(p.name for p in (tmp_path / "it1").iterdir()) == [
        "live",
        "metrics.json",
        "model",
        "pairs.parquet",
    ]
    assert live_series(tmp_path / "it1" / "live", "loss")["step"].to_list() == [1, 2, 3, 4]
