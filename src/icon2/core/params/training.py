"""Training sections: ``train`` (DPO / SPA / DRO losses) and the SPA self-annotation loop."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from icon2.core.errors import ParamsError
from icon2.core.params.sections import _Section

# transformers' SchedulerType values, spelled out so that reading params imports no ML
# library (a test checks they match the installed transformers).
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
)


class SPAParams(_Section):
    """SPA self-refinement: label smoothing of pairs flagged as noisy by an extrapolated model."""

    alpha: float = Field(0.1, ge=0.0, le=1.0)
    k_percent: float = Field(10.0, gt=0.0, lt=100.0)
    window: int = Field(50, ge=1)
    warmup_fraction: float = Field(0.2, ge=0.0, le=1.0)
    lam: float = Field(0.5, ge=0.0)


class DROParams(_Section):
    """Wasserstein-DRO reweighting of the DPO loss (see :mod:`icon2.train.dro`)."""

    eps: float = Field(0.05, ge=0.0)
    pieces: int = Field(5, ge=1)
    t_min: float = Field(0.05, gt=0.0, lt=1.0)
    # Ξ = [support_min, 1]: with 0 the worst case parks the least confident pairs at ξ = 0,
    # where the clamped −log has no gradient; a small floor keeps them trainable.
    support_min: float = Field(0.05, ge=0.0, lt=1.0)
    group_size: int = Field(256, ge=1)
    # Plain DPO for this fraction of the optimizer steps before the first solve: at step 0
    # the policy is the reference, Δ ≡ 0 and every ξ = 1/2, so the worst case would carry no
    # information about which pairs are confusing.
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # 0 = solve once, when the warm-up ends; n > 0 = re-solve every n optimizer steps after.
    resolve_every: int = Field(0, ge=0)


class TrainParams(_Section):
    """The ``train`` section of ``params.yaml``."""

    loss: Literal["dpo", "spa", "dro"] = "dpo"
    beta: float = Field(0.1, gt=0.0)
    learning_rate: float = Field(2e-5, gt=0.0)
    num_train_epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(-1, ge=-1)  # -1 = train for num_train_epochs
    per_device_train_batch_size: int = Field(2, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    per_device_eval_batch_size: int = Field(4, ge=1)
    max_length: int = Field(512, ge=16)
    # Mixed precision (fp32 weights, bf16/fp16 compute). auto = bf16 where the device computes
    # it natively, else fp32 (icon2.core.precision).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    lr_scheduler_type: str = "cosine"
    # Below 1 because transformers 5 reads a warm-up of 1.0 as "one step", not as a ratio.
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    logging_steps: int = Field(1, ge=1)
    eval_steps: int | None = Field(None, ge=1)  # None = evaluate once at the end
    precompute_ref_log_probs: bool = False
    gradient_checkpointing: bool = False
    # Each pair's rows run as one packed sequence: no padding, the shared prompt once
    # (icon2.model.packing). auto = on the CPU, where a forward costs the positions it
    # computes; off on CUDA, whose padded batches keep the fused attention kernels.
    packing: bool | Literal["auto"] = "auto"
    spa: SPAParams = Field(default_factory=SPAParams)
    dro: DROParams = Field(default_factory=DROParams)

    @field_validator("max_steps")
    @classmethod
    def _check_max_steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (use num_train_epochs) or >= 1")
        return value

    @field_validator("lr_scheduler_type")
    @classmethod
    def _check_scheduler(cls, value: str) -> str:
        # Checked here so that a typo fails at params load time, naming the key, instead of
        # deep inside TrainingArguments once a model has been loaded.
        known = list(SCHEDULERS)
        if value not in known:
            raise ValueError(f"unknown scheduler {value!r}; one of {known}")
        return value


class TrainSection(TrainParams):
    """A5 / parts B–C: TRL's DPOConfig is built from these fields (icon2.train.config)."""

    # The preference table to train on: the pairs stage's output, or a user's seed
    # preference file in the same conversational format (prompt/chosen/rejected).
    pairs: str = "data/pairs/pairs.parquet"
    # An accelerate config file (configs/accelerate/{ddp,fsdp,zero3}.yaml or your own under
    # configs/accelerate/); the train and spa@t stages then run under `accelerate launch`.
    # null = one process. Global batch = per-device batch × accumulation × num_processes.
    accelerate_config: str | None = None


class SPAIteration(_Section):
    previous: str = Field(min_length=1)  # π_{t−1}: the seed-DPO checkpoint or the last iteration
    lam: float = Field(0.5, ge=0.0)  # decoupled noise detection λ (eq. 12)


class SPALoopParams(_Section):
    """Part B: iterative self-annotation. Iteration t uses the t-th disjoint prompt slice."""

    # DVC `foreach` runs one stage per entry; keys are 1-based iteration numbers.
    iterations: dict[str, SPAIteration] = Field(
        default_factory=lambda: {
            "1": SPAIteration(previous="data/train/model", lam=0.5),
            "2": SPAIteration(previous="data/spa/1/model", lam=0.25),
        }
    )
    prompts: str = "data/filter/kept.parquet"  # train split of the filter stage, or a file
    prompts_per_iteration: int = Field(8, ge=1)
    temperature: float = Field(0.7, gt=0.0)
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(16, ge=1)
    beta: float = Field(0.1, gt=0.0)
    length_penalty: float = Field(0.0, ge=0.0)  # a in r(y) − a·|y|
    loss: Literal["spa", "dro", "dpo"] = "spa"

    def iteration(self, key: str) -> SPAIteration:
        """The settings of iteration ``key``, or a ParamsError naming the keys there are."""
        if key not in self.iterations:
            raise ParamsError(
                f"spa.iterations: no iteration {key!r} (have {list(self.iterations)})"
            )
        return self.iterations[key]

    @model_validator(mode="after")
    def _check_keys(self) -> SPALoopParams:
        for key in self.iterations:
            if not key.isdigit() or int(key) < 1:
                raise ValueError(f"iterations: key {key!r} must be an iteration number >= 1")
        return self
