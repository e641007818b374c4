"""Re-running a stage on several processes with ``accelerate launch``.

A stage that trains (``train.accelerate_config``) or generates
(``base.generation_accelerate_config``) checks its inputs in the process DVC started, then
re-runs its own command under ``accelerate launch``; the launched ranks see
:data:`LAUNCHED` and go on with the work. Kept free of torch and the trainer, so that a
generating stage depends on this and not on the training code.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from icon2.core.configs import read_accelerate_config
from icon2.core.errors import InputError, ParamsError

LAUNCHED = "ICON2_ACCELERATE_LAUNCHED"


def check_machines(
    config: dict[str, Any], path: Path, key: str = "train.accelerate_config"
) -> None:
    """The process and machine counts, this machine's rank and, across machines, the main
    process's address: each wrong value is one ParamsError (naming ``key``) before any
    process starts."""
    least = {"num_processes": 1, "num_machines": 1, "machine_rank": 0}
    counts: dict[str, int] = {}
    for name, low in least.items():
        value = config.get(name, low)  # accelerate's defaults: one process, one machine
        if type(value) is not int or value < low:
            raise ParamsError(f"{key}: {path}: {name} must be an integer >= {low}, got {value!r}")
        counts[name] = value
    processes, machines, rank = counts.values()
    if rank >= machines:
        raise ParamsError(
            f"{key}: {path}: machine_rank {rank} is out of range for num_machines {machines} "
            f"(0 .. {machines - 1})"
        )
    if processes % machines:
        raise ParamsError(
            f"{key}: {path}: num_processes {processes} (all machines together) is not a "
            f"multiple of num_machines {machines}"
        )
    if machines == 1:
        return
    host, port = config.get("main_process_ip"), config.get("main_process_port")
    if not host or not isinstance(port, int) or not 0 < port < 65536:
        raise ParamsError(
            f"{key}: {path}: {machines} machines need main_process_ip and main_process_port "
            f"(the rank-0 machine's address), got {host!r}:{port!r}"
        )
    try:
        socket.getaddrinfo(str(host), port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ParamsError(
            f"{key}: {path}: main_process_ip {host!r} cannot be reached ({exc.strerror or exc})"
        ) from None


def launched() -> bool:
    """Whether this process was started by :func:`relaunch` (one of N ranks)."""
    return os.environ.get(LAUNCHED) == "1"


#: accelerate's data-parallel process groups: what generation can be spread over.
_DATA_PARALLEL = ("NO", "MULTI_CPU", "MULTI_GPU")


def relaunch_generation(config: str | None, script: Path, options: list[str]) -> None:
    """:func:`relaunch` for a generating stage (``base.generation_accelerate_config``): its
    processes each generate every N-th shard (:func:`icon2.steps.shards.run_shards`), so only
    a data-parallel config makes sense; its process and machine counts are checked first.

    Raises:
        ParamsError: A missing or unparsable config, a sharded one (FSDP, DeepSpeed), or a
            wrong process or machine setting.
        SystemExit: With the launcher's exit status, after the launched run.
    """
    if config is None or launched():
        return
    key, path = "base.generation_accelerate_config", Path(config)
    try:
        parsed = read_accelerate_config(path)
    except InputError as exc:
        raise ParamsError(f"{key}: {exc}") from None
    kind = str(parsed["distributed_type"])
    if kind not in _DATA_PARALLEL:
        raise ParamsError(
            f"{key}: {path} selects {kind}; generation is spread as data parallel, one engine "
            f"per process: use a config with distributed_type one of {list(_DATA_PARALLEL)} "
            f"(e.g. configs/accelerate/ddp.yaml)"
        )
    check_machines(parsed, path, key)
    launch(config, script, options)


def launch(config: str, script: Path, options: list[str]) -> None:
    """Run ``script options`` under ``accelerate launch --config_file config`` (each rank
    sees :data:`LAUNCHED`); exit with its status, after one error line if it failed."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config]
    # PYTHONSAFEPATH: the ranks do not put stages/ first on sys.path, where a stage script
    # named like a standard module (select.py, ...) would shadow it.
    env = {**os.environ, LAUNCHED: "1", "PYTHONSAFEPATH": "1"}
    done = subprocess.run([*command, str(script), *options], env=env, check=False)
    if done.returncode != 0:
        print(
            f"error: {script.name} under {config} failed (exit {done.returncode})", file=sys.stderr
        )
    raise SystemExit(done.returncode)


def cli_options(values: Mapping[str, object]) -> list[str]:
    """A stage's option values (``locals()`` at the top of its ``main``) as command-line
    arguments: ``model_dir=Path("m")`` → ``["--model-dir", "m"]``; None values are left out."""
    out: list[str] = []
    for name, value in values.items():
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    return out
