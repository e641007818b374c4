"""One engine at a time: EngineSession and open_backend (vLLM replaced by a counting fake)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from icon2.core.params import load_params
from icon2.engines import open_backend
from icon2.engines.base import Generation, Sampling
from icon2.engines.session import EngineSession


class Model:
    """Stands for an HF model: where its parameters live, and every move."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.moves: list[str] = []

    def parameters(self) -> Any:
        yield SimpleNamespace(device=self.device)

    def to(self, device: Any) -> Model:
        self.device = torch.device(device)
        self.moves.append(str(device))
        return self


class Engine:
    """A fake vLLM engine: how many are alive, and where the models were when it started."""

    alive = 0
    most = 0
    started = 0

    def __init__(self, *args: Any, watch: Sequence[Model] = (), **kwargs: Any) -> None:
        Engine.alive += 1
        Engine.started += 1
        Engine.most = max(Engine.most, Engine.alive)
        self.seen = [m.device.type for m in watch]
        self.closed = False

    def generate(
        self,
        prompts: Sequence[str],
        sampling: Sampling,
        *,
        vectors: Mapping[int, torch.Tensor] | None = None,
        desc: str | None = None,
    ) -> list[Generation]:
        assert not self.closed
        return [Generation(p, 1, "stop") for p in prompts]

    def close(self) -> None:
        self.closed = True
        Engine.alive -= 1


@pytest.fixture(autouse=True)
def _reset() -> None:
    Engine.alive = Engine.most = Engine.started = 0


def test_the_engine_starts_at_first_use_and_the_models_wait_on_the_host() -> None:
    gpu, other, host = Model("cuda:1"), Model("cuda:0"), Model("cpu")
    engines: list[Engine] = []

    def start() -> Engine:
        engines.append(Engine(watch=[gpu, other, host]))
        return engines[-1]

    session = EngineSession(start, [gpu, other, host, gpu])
    assert not session.running and Engine.started == 0  # nothing until the first call
    session.generate(["a"], Sampling())
    session.generate(["b"], Sampling())
    assert Engine.started == 1 and session.running
    assert engines[0].seen == ["cpu", "cpu", "cpu"]  # off the accelerator while it ran
    session.close()
    assert Engine.alive == 0 and not session.running
    # Back where each was; the model on the host never moved; listed twice, moved once.
    assert (gpu.device, other.device) == (torch.device("cuda:1"), torch.device("cuda:0"))
    assert gpu.moves == ["cpu", "cuda:1"] and other.moves == ["cpu", "cuda:0"]
    assert host.moves == []


def test_close_between_calls_gives_the_gpu_back_after_each_call() -> None:
    gpu = Model("cuda:0")
    during: list[str] = []

    def start() -> Engine:
        return Engine(watch=[gpu])

    session = EngineSession(start, [gpu], close_between_calls=True)
    for _ in range(3):
        session.generate(["a"], Sampling())
        during.append(gpu.device.type)  # what the step's HF reads see between calls
    assert during == ["cuda", "cuda", "cuda"]
    assert Engine.started == 3 and Engine.most == 1 and Engine.alive == 0


def test_a_failed_call_still_closes_the_engine_and_returns_the_models() -> None:
    gpu = Model("cuda:0")

    class Broken(Engine):
        def generate(self, *args: Any, **kwargs: Any) -> list[Generation]:
            raise RuntimeError("out of memory")

    session = EngineSession(lambda: Broken(), [gpu], close_between_calls=True)
    with pytest.raises(RuntimeError, match="out of memory"):
        session.generate(["a"], Sampling())
    assert Engine.alive == 0 and gpu.device.type == "cuda"


def _vllm_params(write_params: Callable[..., Path]) -> Any:
    return load_params(write_params({"base": {"engine": "vllm"}}))


def _fake_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    import icon2.engines.vllm as vllm

    monkeypatch.setattr(vllm, "require_vllm", lambda: None)
    monkeypatch.setattr(vllm, "check_steerable", lambda model_dir: "LlamaForCausalLM")
    monkeypatch.setattr(vllm, "VLLMBackend", Engine)


def test_evaluate_answers_two_models_with_one_engine_alive_at_a_time(
    tiny_model: Any, write_params: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from icon2.evaluate.compare import answer

    _fake_vllm(monkeypatch)
    p = _vllm_params(write_params)
    _, tok = tiny_model
    trained, base = Model("cuda:0"), Model("cuda:0")
    first = answer(p, Path("trained"), trained, tok, ["q1", "q2"], "trained", [base])
    second = answer(p, Path("base"), base, tok, ["q1", "q2"], "base", [trained])
    assert len(first) == len(second) == 2
    assert Engine.started == 2 and Engine.most == 1 and Engine.alive == 0
    # Both models left the GPU for each engine and came back after it.
    assert trained.moves == base.moves == ["cpu", "cuda:0", "cpu", "cuda:0"]


def test_open_backend_checks_before_starting_and_closes_on_error(
    tiny_model: Any, write_params: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import icon2.engines.vllm as vllm
    from icon2.core.errors import ModelError

    _fake_vllm(monkeypatch)

    def refuse(model_dir: Path) -> str:
        raise ModelError("steering with base.engine=vllm supports LlamaForCausalLM")

    monkeypatch.setattr(vllm, "check_steerable", refuse)
    p = _vllm_params(write_params)
    model, tok = tiny_model
    steered = open_backend(p, Path("m"), model, tok, batch_size=2, steering=True)
    with pytest.raises(ModelError, match="supports"), steered:  # before any engine starts
        pass
    assert Engine.started == 0
    plain = open_backend(p, Path("m"), model, tok, batch_size=2)
    with pytest.raises(RuntimeError, match="stage failed"), plain as backend:
        backend.generate(["a"], Sampling())
        raise RuntimeError("stage failed")
    assert Engine.started == 1 and Engine.alive == 0


def test_the_hf_engine_is_made_as_before(
    tiny_model: Any, write_params: Callable[..., Path]
) -> None:
    from icon2.engines.hf import HFBackend

    model, tok = tiny_model
    with open_backend(load_params(write_params()), Path("m"), model, tok, batch_size=2) as backend:
        assert isinstance(backend, HFBackend) and backend.batch_size == 2
