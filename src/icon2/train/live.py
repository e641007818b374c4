"""Live training curves with dvclive: one series per logged metric, written at every step.

``dvc plots show`` draws them (``dvc.yaml`` declares ``<dir>/plots/metrics``) and ``dvc exp
show`` reads the latest values from ``<dir>/metrics.json`` while a run is going.

Not ``report_to="dvclive"``: transformers' own callback would write to ``./dvclive``, dump
every ``TrainingArguments`` field to a params file (``params.yaml`` already versions the
settings) and count steps by log calls. This one writes only from the main process, at the
trainer's optimizer step, under ``train/<key>`` and ``eval/<key>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from icon2.core.errors import Icon2Error

# The end-of-training summary transformers logs once; not a per-step series.
_SUMMARY = frozenset(
    {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss"}
)
_SKIP = frozenset({"epoch", "total_flos", "num_tokens"})
# The series whose latest value goes to <dir>/metrics.json (a declared DVC metric); every
# series is still drawn in the plots. Keeps `dvc metrics show` to the headline numbers.
SUMMARY_SERIES = (
    "train/loss",
    "train/rewards/accuracies",
    "train/rewards/margins",
    "eval/loss",
    "eval/rewards/accuracies",
    "eval/rewards/margins",
)


def nested_summary(latest: dict[str, float]) -> dict[str, Any]:
    """``{"train/loss": v}`` → ``{"train": {"loss": v}}``, for the series in SUMMARY_SERIES."""
    out: dict[str, Any] = {}
    for name in SUMMARY_SERIES:
        if name in latest:
            *parents, leaf = name.split("/")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = latest[name]
    return out


def series_name(key: str) -> str:
    """``eval_loss`` → ``eval/loss``; ``rewards/accuracies`` → ``train/rewards/accuracies``."""
    if key.startswith("eval_"):
        return "eval/" + key.removeprefix("eval_")
    return "train/" + key


class LiveCurves(TrainerCallback):
    """Logs every numeric entry of the trainer's logs to a ``dvclive.Live`` in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.live: Any = None
        self.latest: dict[str, float] = {}

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero and self.live is None:
            from dvclive.live import Live
            from scmrepo.exceptions import SCMError

            try:
                # dvcyaml=None: dvc.yaml declares these files itself; no experiment of its own.
                self.live = Live(dir=str(self.directory), save_dvc_exp=False, dvcyaml=None)
            except SCMError as exc:  # dvclive reads HEAD, which an empty repository lacks
                raise Icon2Error(
                    f"{self.directory}: dvclive cannot start in this git repository ({exc}); "
                    f"commit once (git commit) before dvc repro"
                ) from None

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.live is None or not logs or _SUMMARY & logs.keys():
            return
        self.live.step = state.global_step
        for key, value in logs.items():
            if key not in _SKIP and isinstance(value, int | float) and not isinstance(value, bool):
                self.live.log_metric(series_name(key), float(value))
                self.latest[series_name(key)] = float(value)
        self.live.summary = nested_summary(self.latest)
        self.live.make_summary()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.live is not None:
            self.live.end()
            self.live = None
