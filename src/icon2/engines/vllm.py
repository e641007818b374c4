"""vLLM generation behind ``Backend``, steering included (``base.engine: vllm``).

Steering lives inside vLLM's compiled graph (``vllm_steering``): each decoder layer of
the supported architectures carries a table of vectors, one row per steering group, and
each request names its group. The request's groups (:class:`~icon2.engines.base.Steering`:
criteria × signs) map onto the layers' tables as they are, with no per-row vectors: a call
runs as one ``LLM.generate`` — one continuous batch — for up to ``GROUPS − 1`` distinct
groups (more are split into several calls), with the tables set in
place before it and zeroed after it (also on error), so nothing leaks into the next call.
Prefix caching stays on, salted per vector set: KV blocks computed under one vector are
never reused under another.

Prompts go in as token ids from the stage's tokenizer and come back as ids decoded by it;
stops, ``ignore_eos`` and seeds follow ``HFBackend``, so both engines see the same tokens
(greedy outputs are equal in fp32; see tests/engines/test_vllm.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.errors import ModelError
from icon2.core.params import VLLMParams
from icon2.engines.base import Generation, Sampling, SteeringInput, as_steering, to_generation
from icon2.engines.vllm_steering import ENV_FLAG, EXTRA_KEY, GROUPS, SUPPORTED

INSTALL = "pip install -e '.[vllm]' && pip uninstall -y torchvision torchaudio torchcodec"
RowGroup = tuple[list[int], dict[int, list[float]]]


def require_vllm() -> None:
    """Fail in one line, naming the extra, when vLLM cannot be used here."""
    if importlib.util.find_spec("vllm") is None:
        raise ModelError(f"base.engine=vllm needs the vLLM extra; install it with `{INSTALL}`")
    if importlib.util.find_spec("torchvision") is not None:
        try:
            import torchvision  # noqa: F401
        except (RuntimeError, OSError, ImportError) as exc:
            # PyPI's torchvision is built for CUDA torch; with the CPU torch its ops fail
            # to load, and transformers (so vLLM) imports it whenever it is installed.
            raise ModelError(
                f"torchvision is installed but does not load with this torch ({exc}); "
                f"vLLM needs none of it: `pip uninstall -y torchvision torchaudio torchcodec`"
            ) from None


def check_steerable(model_dir: Path) -> str:
    """The model's architecture, if vLLM steering supports it; one clear line if not."""
    config = json.loads((model_dir / "config.json").read_text())
    arch = str((config.get("architectures") or ["(none in config.json)"])[0])
    if arch not in SUPPORTED:
        raise ModelError(
            f"steering with base.engine=vllm supports {', '.join(sorted(SUPPORTED))}; "
            f"{model_dir} is {arch} (use base.engine: hf)"
        )
    return arch


class VLLMBackend:
    """One vLLM engine for a model directory, started once (in its own processes)."""

    def __init__(
        self,
        model_dir: Path,
        tokenizer: PreTrainedTokenizerBase,
        *,
        stop_ids: Sequence[int],
        settings: VLLMParams,
        seed: int = 0,
    ) -> None:
        require_vllm()
        self.tokenizer = tokenizer
        self.stop_ids = list(stop_ids)
        config = json.loads((model_dir / "config.json").read_text())
        self.arch = str((config.get("architectures") or ["?"])[0])
        _engine_environment(settings)
        from vllm import LLM
        from vllm.platforms import current_platform

        self.llm = LLM(
            model=str(model_dir),
            dtype=settings.dtype,
            seed=seed,
            max_model_len=settings.max_model_len,
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            enforce_eager=settings.enforce_eager,
            enable_prefix_caching=True,
            # A prompt prefilled in chunks has its first sample discarded, and vLLM then
            # rewinds the request's seeded generator, which CPU generators cannot do
            # ("CPU Generator does not use offset"): on CPU, prompts are prefilled whole.
            enable_chunked_prefill=not current_platform.is_cpu(),
            skip_tokenizer_init=True,  # ids in, ids out: the stage's tokenizer does both ends
            worker_extension_cls="icon2.engines.vllm_steering.SteeringWorker",
        )
        ranks = self.llm.collective_rpc("icon2_steering_layers")
        self.steerable = sorted({layer for rank in ranks for layer in rank})
        if self.arch in SUPPORTED and not self.steerable:
            raise ModelError(
                "icon2's steering plugin did not load into vLLM: reinstall icon2 "
                f"(`{INSTALL}`) so that its vllm.general_plugins entry point is registered"
            )

    def generate(
        self,
        prompts: Sequence[str],
        sampling: Sampling,
        *,
        vectors: SteeringInput | None = None,
        desc: str | None = None,
    ) -> list[Generation]:
        from vllm import SamplingParams

        groups = self._groups(len(prompts), vectors)  # checks everything before generating
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        out: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(groups), GROUPS - 1):
            chunk = groups[start : start + GROUPS - 1]
            # Group 0 is the unsteered one; steered sets get 1, 2, ... in this call.
            table = {g: vecs for g, (_, vecs) in enumerate(chunk, start=1) if vecs}
            rows, requests, params = [], [], []
            for g, (members, vecs) in enumerate(chunk, start=1):
                salt = {"cache_salt": _salt(vecs)} if vecs else {}
                extra = {EXTRA_KEY: g} if vecs else {}
                for i in members:
                    rows.append(i)
                    requests.append({"prompt_token_ids": ids[i], **salt})
                    params.append(SamplingParams(**self._kwargs(sampling, i), extra_args=extra))
            try:
                if table:
                    self._set(table)
                results = self.llm.generate(requests, params, use_tqdm=desc is not None)
            finally:
                if table:
                    self._set({})
            for i, result in zip(rows, results, strict=True):
                out[i] = to_generation(
                    self.tokenizer, list(result.outputs[0].token_ids), self.stop_ids
                )
        return [g for g in out if g is not None]

    def close(self) -> None:
        """Stop the engine's processes now (they also stop when this process exits)."""
        self.llm.llm_engine.engine_core.shutdown()

    def _groups(self, n: int, vectors: SteeringInput | None) -> list[RowGroup]:
        """The request's groups that have prompts: (prompts, layer → vector), in group order."""
        steering = as_steering(vectors, n)  # checks the shapes
        if steering is None:
            return [(list(range(n)), {})]
        if self.arch not in SUPPORTED:
            raise ModelError(
                f"steering with base.engine=vllm supports {', '.join(sorted(SUPPORTED))}; "
                f"this model is {self.arch} (use base.engine: hf)"
            )
        layers = sorted(steering.table)
        missing = [layer for layer in layers if layer not in self.steerable]
        if missing:
            raise ModelError(f"steering layers {missing} are not among {self.steerable}")
        table = {layer: steering.table[layer].detach().float().cpu() for layer in layers}
        return [
            (members, {layer: table[layer][g].tolist() for layer in layers})
            for g, members in enumerate(steering.members())
            if members
        ]

    def _set(self, table: Mapping[int, Mapping[int, list[float]]]) -> None:
        """Group → layer → vector into every worker's tables (``{}`` zeroes them)."""
        groups = {g: dict(v) for g, v in table.items()}
        self.llm.collective_rpc("icon2_set_steering", args=(groups,))

    def _kwargs(self, s: Sampling, i: int) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "max_tokens": s.max_new_tokens,
            # Stop where HFBackend stops: at the stop ids, not at the config's own EOS.
            "stop_token_ids": self.stop_ids,
            "ignore_eos": True,
            "repetition_penalty": s.repetition_penalty,
            "detokenize": False,
        }
        if s.ignore_eos:
            # HF's min_new_tokens: stop ids are masked until the budget is spent.
            kw["min_tokens"] = s.max_new_tokens
        if s.temperature > 0:
            # One seed per request: repeated prompts get different, reproducible samples.
            kw.update(temperature=s.temperature, top_p=s.top_p, seed=s.seed + i)
        else:
            kw["temperature"] = 0.0
        return kw


def _salt(layer_vectors: Mapping[int, list[float]]) -> str:
    blob = json.dumps(sorted(layer_vectors.items())).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _rank_devices(tensor_parallel: int) -> None:
    """Under ``accelerate launch`` with several processes on a machine, each process's engine
    sees only its own GPUs (``tensor_parallel`` of them, the process's slice of what is
    visible), so that the engines do not all start on GPU 0."""
    local, count = os.environ.get("LOCAL_RANK"), int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    if local is None or count <= 1 or not torch.cuda.is_available():
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    rank = int(local)
    mine = ids[rank * tensor_parallel : (rank + 1) * tensor_parallel]
    if len(mine) < tensor_parallel:
        raise ModelError(
            f"process {rank} of {count} on this machine needs {tensor_parallel} GPU(s) "
            f"(vllm.tensor_parallel_size) but {len(ids)} are visible: lower num_processes "
            f"in base.generation_accelerate_config or the tensor-parallel size"
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)


def _engine_environment(s: VLLMParams) -> None:
    """What the engine's processes inherit; set before vLLM reads its environment."""
    os.environ[ENV_FLAG] = "1"
    _rank_devices(s.tensor_parallel_size)
    # vLLM's compile-cache key does not see the plugin: a graph cached by a plain vLLM run
    # on the same model has no steering add in it. Steered graphs get their own cache.
    root = os.environ.get("VLLM_CACHE_ROOT") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vllm"
    )
    if Path(root).name != "icon2-steering":
        os.environ["VLLM_CACHE_ROOT"] = str(Path(root) / "icon2-steering")
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(s.cpu_kv_cache_gib)
    # Per-request steering groups are written by a wrapper around the V1 model runner's
    # input preparation (vllm_steering.track_groups), the runner vLLM uses on CPU; on GPUs
    # with Triton vLLM 0.32 would pick its V2 runner, which has no such method.
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    # WARNING would print one line per weight cast from the saved dtype (hundreds).
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
