"""Training on several processes with ``accelerate`` (DDP, FSDP, DeepSpeed ZeRO).

* **Launch.** A stage runs as one plain process unless ``train.accelerate_config`` names an
  accelerate config file; then it re-executes itself under ``accelerate launch --config_file``
  with the same options, so ``dvc.yaml``'s command stays ``python stages/<stage>.py ...``.
  The config is checked in the parent first: a missing or unparsable file, DeepSpeed chosen
  without ``deepspeed`` installed, or a mixed precision that disagrees with
  ``train.precision`` is one ``error:`` line, not one traceback per process.
* **Writes.** Inside the launched processes only the main process writes outputs (still
  atomically); the weights are gathered first, a collective under ZeRO-3/FSDP.
* **Global statistics.** TRL/transformers already average the loss and gradients over ranks;
  SPA's confidence window and DRO's ξ need every rank's pairs (see
  :class:`GlobalConfidenceWindow`, :func:`gather_confidences`, :func:`solve_on_main`).

With one process every helper here is the identity, so single-process runs are unchanged.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from accelerate.utils import broadcast_object_list, gather_object

from icon2.core.configs import read_accelerate_config
from icon2.core.errors import InputError, ParamsError
from icon2.core.launch import check_machines, cli_options, launch, launched
from icon2.core.precision import compute_device, resolve_mixed
from icon2.core.processes import process_state
from icon2.train.losses import ConfidenceWindow

# Re-exported: the training stages import them from here.
__all__ = ["check_machines", "cli_options", "launched"]

T = TypeVar("T")
_MIXED = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def check_accelerate_config(path: Path, precision: str) -> dict[str, Any]:
    """The parsed accelerate config, after the checks that would otherwise fail per process.

    Raises:
        ParamsError: Naming ``train.accelerate_config`` and what is wrong.
    """
    key = "train.accelerate_config"
    try:
        config = read_accelerate_config(path)
    except InputError as exc:
        raise ParamsError(f"{key}: {exc}") from None
    if config["distributed_type"] == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        stage = (config.get("deepspeed_config") or {}).get("zero_stage", "?")
        raise ParamsError(
            f"{key}: {path} selects DeepSpeed ZeRO-{stage}, but deepspeed is not installed "
            f"(pip install deepspeed on the GPU machine, or use configs/accelerate/fsdp.yaml)"
        )
    check_sharding_device(config, path)
    check_machines(config, path)
    resolved = resolve_mixed("train.precision", precision, compute_device("auto"))
    mixed, want = str(config.get("mixed_precision", "no")), _MIXED[resolved.value]
    if mixed != want:
        said = precision if precision != "auto" else f"auto ({want} here: {resolved.reason})"
        raise ParamsError(
            f"{key}: {path} has mixed_precision: {mixed}, but train.precision is {said} "
            f"(set mixed_precision: {want} there, or change train.precision)"
        )
    return config


#: What happens to a sharded config on a machine without CUDA (accelerate 1.16, transformers
#: 5.25, DeepSpeed 0.19.8; measured with 2 processes on gloo, tests/train/test_distributed.py).
_NO_CPU_SHARDING = {
    "FSDP": (
        "accelerate applies its FSDP plugin only to GPU-class process groups: on CPU (gloo) "
        "the run would silently train as plain DDP (distributed_type MULTI_CPU)"
    ),
    "DEEPSPEED": (
        "accelerate drops its DeepSpeed plugin when training on the CPU (silently plain DDP), "
        "and with DeepSpeed's CPU accelerator transformers sizes the batch for 1 process of "
        "2 (DeepSpeed: train_batch_size is not equal to micro_batch_per_gpu * "
        "gradient_acc_step * world_size)"
    ),
}


def check_sharding_device(config: dict[str, Any], path: Path) -> None:
    """FSDP and DeepSpeed configs need CUDA; on a CPU-only machine they are refused rather
    than run as something else (why: ``_NO_CPU_SHARDING``)."""
    kind = str(config.get("distributed_type"))
    if kind in _NO_CPU_SHARDING and not torch.cuda.is_available():
        raise ParamsError(
            f"train.accelerate_config: {path} selects {kind}, which needs CUDA GPUs: "
            f"{_NO_CPU_SHARDING[kind]}; on this machine use configs/accelerate/ddp.yaml"
        )


def relaunch(config: str | None, precision: str, script: Path, options: list[str]) -> None:
    """Re-run ``script`` under ``accelerate launch`` if ``config`` is set; exits when done.

    Returns (and the caller goes on in this process) when no config is set or this process
    is already one of the launched ranks.

    Raises:
        ParamsError: If the config fails :func:`check_accelerate_config`.
        SystemExit: With the launcher's exit status, after the launched run.
    """
    if config is None or launched():
        return
    check_accelerate_config(Path(config), precision)
    launch(config, script, options)


def full_state_dict(trainer: Any) -> dict[str, torch.Tensor] | None:
    """The trained weights on the main process (None elsewhere). Every rank must call it:
    under ZeRO-3 and FSDP the shards are gathered (ZeRO-3 needs zero3_save_16bit_model)."""
    accelerator = trainer.accelerator
    wrapped = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
    state = accelerator.get_state_dict(wrapped)
    return state if accelerator.is_main_process else None


class GlobalConfidenceWindow(ConfidenceWindow):
    """SPA's moving window over the *global* batch.

    Every rank pushes all ranks' confidences (gathered in rank order), so every rank holds
    the same window and threshold; each flags its own rows against it. With one process this
    is exactly :class:`~icon2.train.losses.ConfidenceWindow`.
    """

    def push(self, conf: torch.Tensor) -> None:
        super().push(_gather_values(conf))

    def flags(self, conf: torch.Tensor) -> torch.Tensor:
        ConfidenceWindow.push(self, _gather_values(conf))
        tau = self.threshold()
        if tau is None:
            return torch.zeros(conf.shape, dtype=torch.float32, device=conf.device)
        return (conf.detach().double() < tau).float()


def _gather_values(conf: torch.Tensor) -> torch.Tensor:
    values = conf.detach().double().flatten().cpu()
    if process_state().num_processes == 1:
        return values
    return torch.tensor(gather_object(values.tolist()), dtype=torch.float64)


def rank_shard(size: int) -> list[int]:
    """This rank's contiguous slice of ``range(size)``, padded to an equal length on every
    rank by repeating the last index (ZeRO-3 needs the same number of forwards on each)."""
    state = process_state()
    per = -(-size // state.num_processes)
    start = state.process_index * per
    return [min(start + i, size - 1) for i in range(per)] if size else []


def gather_confidences(
    index: npt.NDArray[np.int64], xi: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Every rank's ``(pair index, ξ)``, with the padding duplicates of :func:`rank_shard`
    dropped (first occurrence kept)."""
    if process_state().num_processes == 1:
        return index, xi
    pairs = gather_object(list(zip(index.tolist(), xi.tolist(), strict=True)))
    all_index = np.array([int(i) for i, _ in pairs], dtype=np.int64)
    all_xi = np.array([float(x) for _, x in pairs], dtype=np.float64)
    _, first = np.unique(all_index, return_index=True)
    keep = np.sort(first)
    return all_index[keep], all_xi[keep]


def solve_on_main(solve: Callable[[], T]) -> T:
    """Runs ``solve`` on the main process only and hands its result to every rank."""
    state = process_state()
    if state.num_processes == 1:
        return solve()
    box: list[Any] = [solve() if state.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]  # type: ignore[no-any-return]
