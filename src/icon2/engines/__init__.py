"""Text generation behind one interface (``Backend``): Hugging Face ``generate`` or vLLM.
Steering enters as plain per-layer tensors, so an engine knows nothing about directions.
Every generating step (A2 synthesis, A4 pairs, part B sampling, evaluation) uses it, and
gets its engine from ``open_backend`` (``base.engine``): one engine at a time, closed when the
step is done, with the step's HF models off the GPU while a vLLM engine holds it
(:mod:`icon2.engines.session`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from icon2.core.params import Params

if TYPE_CHECKING:  # transformers is imported when an engine is made, not before
    from transformers import PreTrainedModel
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    from icon2.engines.base import Backend


def generating_copy(model: PreTrainedModel, dtype: str) -> PreTrainedModel:
    """The model the HF engine decodes with: ``model`` itself, or a copy in ``dtype`` (the
    resolved ``hf.dtype``) when that differs from the model's dtype (the stage's model keeps
    ``base.dtype`` for its hidden-state reads, log-probs and training)."""
    import copy

    from icon2.model.loading import DTYPES

    if dtype == "null" or DTYPES[dtype] == model.dtype:
        return model
    clone: Any = copy.deepcopy(model)
    clone.to(DTYPES[dtype])  # in place (nn.Module.to)
    return cast("PreTrainedModel", clone.eval())


def make_backend(
    p: Params,
    model_dir: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    batch_size: int,
    steering: bool = False,
) -> Backend:
    """The engine ``base.engine`` names, for the model loaded from ``model_dir``.

    Both stop at the chat template's end-of-turn token (or EOS). ``batch_size`` is the HF
    engine's; vLLM schedules its own batches. ``steering``: the stage will pass vectors,
    so an architecture vLLM cannot steer fails here, before the engine starts.
    """
    from icon2.core.precision import announce, generation_dtype
    from icon2.model.chat import end_of_turn_ids

    dtype = generation_dtype(p)
    if p.base.engine == "hf":
        from icon2.engines.hf import HFBackend

        announce(dtype)
        stops = end_of_turn_ids(tokenizer)
        return HFBackend(
            generating_copy(model, dtype.value), tokenizer, stop_ids=stops, batch_size=batch_size
        )
    from icon2.engines.vllm import VLLMBackend, check_steerable, require_vllm

    require_vllm()
    if steering:
        check_steerable(model_dir)
    announce(dtype)
    stops = end_of_turn_ids(tokenizer)
    settings = p.vllm.model_copy(update={"dtype": dtype.value})
    return VLLMBackend(model_dir, tokenizer, stop_ids=stops, settings=settings, seed=p.base.seed)


@contextmanager
def open_backend(
    p: Params,
    model_dir: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    batch_size: int,
    steering: bool = False,
    resident: Sequence[Any] = (),
    close_between_calls: bool = False,
) -> Iterator[Backend]:
    """:func:`make_backend` for the length of a ``with`` block.

    With vLLM: what can be checked is checked now (vLLM installed, the architecture
    steerable), the engine starts at the first ``generate``, ``model`` and ``resident`` (the
    stage's other HF models) leave the accelerator while it runs, and it is stopped when the
    block ends — or after every call with ``close_between_calls``, for steps that read with
    their HF models between generations. The HF engine is returned as it is.
    """
    if p.base.engine == "hf":
        yield make_backend(p, model_dir, model, tokenizer, batch_size=batch_size, steering=steering)
        return
    from icon2.engines.session import EngineSession
    from icon2.engines.vllm import check_steerable, require_vllm

    require_vllm()
    if steering:
        check_steerable(model_dir)
    session = EngineSession(
        lambda: make_backend(
            p, model_dir, model, tokenizer, batch_size=batch_size, steering=steering
        ),
        [model, *resident],
        close_between_calls=close_between_calls,
    )
    try:
        yield session
    finally:
        session.close()
