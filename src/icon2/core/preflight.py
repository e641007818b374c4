"""The pipeline's first stage (`check`): what params.yaml asks for is judged before DVC
deletes any output.

`dvc repro` removes a stage's outputs before it runs the stage's command, so a typo that the
stage itself refuses at once still cost the last good results of that stage. Every stage of
the three pipelines depends on the `check` stage's marker, so DVC runs the check first; the
marker's text never changes, so a check that passes reruns nothing downstream by itself.

What can be known before any model is loaded, from params.yaml and the file system only:
- the whole file against the schema (``load_params``; answer budgets that no answer can end
  within are refused there);
- every input path that a stage reads exists, unless a stage of the pipelines writes it;
- a model, judge or reward model named by a path that is not a model directory;
- layer lists outside the model or outside the layers the directions will have, when the
  number of layers is known (``base.model`` is a local directory, or the ``model`` stage's
  card names the same model);
- a ``threshold`` filter that no standardised score can reach;
- a benchmark file (``benchmark.file``) that is not a usable preference file.
Nothing here imports an ML library.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from icon2.core.errors import InputError, ModelError, ParamsError
from icon2.core.layers import resolve_layers
from icon2.core.params import Params
from icon2.core.preferences import read_preference_file

# The model stage's card, named here so that reading it needs no torch (icon2.model.loading
# writes it under this name).
MODEL_CARD = "icon2_model.json"
# What the check writes: constant, so that its hash, which every stage depends on, is too.
MARKER_TEXT = "params.yaml and the input paths it names passed stages/check.py\n"


def names_a_path(name: str) -> bool:
    """Whether a model name is meant as a local path (otherwise: a built-in name or hub id)."""
    path = Path(name).expanduser()
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or path.exists()


def input_paths(p: Params) -> dict[str, str]:
    """Params key -> the input file or directory it names (every stage's, all pipelines)."""
    paths = {
        "directions.features": p.directions.features,
        "synthesize.file": p.synthesize.file,  # a dvc.yaml dependency even when unused
        "train.pairs": p.train.pairs,
        "evaluate.prompts": p.evaluate.prompts,
        "benchmark.file": p.benchmark.file,
        "spa.prompts": p.spa.prompts,
        "leakage.prompts": p.leakage.prompts,
        "leakage.training": p.leakage.training,
    }
    if p.train.accelerate_config:
        paths["train.accelerate_config"] = p.train.accelerate_config
    for key, it in p.spa.iterations.items():
        paths[f"spa.iterations.{key}.previous"] = it.previous
    for name, source in p.sensitivity.sources.items():
        paths[f"sensitivity.sources.{name}.file"] = source.file
    for method, pairs in p.compare.methods.items():
        paths[f"compare.methods.{method}"] = pairs
    return paths


class Declared(NamedTuple):
    """What the DVC stages of the repository declare, as absolute paths."""

    outs: list[Path]  # what they write
    deps: list[Path]  # what they read


def check_inputs(p: Params, declared: Callable[[], Declared], root: Path) -> None:
    """Every input path a stage reads exists, or a stage writes it.

    Args:
        p: the validated params.
        declared: the stages' outputs and dependencies; called only when a path is
            missing, since listing them means reading every dvc.yaml.
        root: the directory paths are relative to (the repository root).

    Raises:
        InputError: naming the first key whose path a stage reads but nothing provides. A
            path no stage reads (e.g. ``compare.methods`` without comparison/dvc.yaml) is
            left alone; ``train.accelerate_config`` is read whenever it is set.
    """
    missing = {k: v for k, v in input_paths(p).items() if not (root / v).exists()}
    if not missing:
        return
    outs, deps = declared()
    for key, value in missing.items():
        path = (root / value).resolve()
        read = key == "train.accelerate_config" or any(path == d or d in path.parents for d in deps)
        if read and not any(path == out or out in path.parents for out in outs):
            raise InputError(
                f"params.yaml: {key}: {value} does not exist and no stage writes it; "
                f"expected an existing file (paths are relative to {root.resolve()})"
            )


def check_models(p: Params) -> None:
    """A model named by a path must be a Hugging Face model directory (hub ids and the
    built-in name are resolved by the stage that loads them)."""
    named = {
        "base.model": p.base.model,
        "evaluate.judge": p.evaluate.judge,
        "evaluate.reward_model": p.evaluate.reward_model,
        "baselines.judge": p.baselines.judge,
        "baselines.reward_model": p.baselines.reward_model,
    }
    for key, name in named.items():
        if not name or not names_a_path(name):
            continue
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ModelError(f"params.yaml: {key}: {name!r}: no such model directory")
        if not (path / "config.json").is_file():
            raise ModelError(
                f"params.yaml: {key}: {name!r} has no config.json (expected a Hugging Face "
                f"model directory)"
            )


def model_layers(p: Params, model_dir: Path) -> int | None:
    """The number of decoder layers of ``base.model``, if it can be read without loading it:
    from a local directory's config.json, or from the model stage's card when that card
    was written for the same model and revision. None when unknown (e.g. a first run)."""
    config = Path(p.base.model).expanduser() / "config.json"
    n: object = None
    try:
        if config.is_file():
            data = json.loads(config.read_text(encoding="utf-8"))
            text = data.get("text_config") or {}
            n = data.get("num_hidden_layers", text.get("num_hidden_layers"))
        elif (model_dir / MODEL_CARD).is_file():
            card = json.loads((model_dir / MODEL_CARD).read_text(encoding="utf-8"))
            same = (card.get("name"), card.get("revision")) == (p.base.model, p.base.revision)
            n = card.get("num_layers") if same else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None  # the stage that reads it reports a broken file in its own words
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def check_layers(p: Params, num_layers: int) -> None:
    """Each stage's layer list resolves as the stage will resolve it, against the layers
    the directions stage writes (``directions.layers``)."""
    have = resolve_layers(p.directions.layers, num_layers, "params.yaml: directions.layers")
    source = "the directions that directions.layers asks for"
    resolve_layers(
        p.score.layers, num_layers, "params.yaml: score.layers", within=have, source=source
    )
    resolve_layers(
        p.pairs.layers,
        num_layers,
        "params.yaml: pairs.layers",
        default="middle",
        within=have,
        source=source,
    )


def check_filter(p: Params) -> None:
    """A ``threshold`` no score can reach. Standardised scores are z-scores over the n
    instructions, and none exceeds sqrt(n − 1) (population std); n is at most
    ``synthesize.count`` when the instructions are sampled (cleaning only drops)."""
    cfg = p.filter
    if cfg.rule != "threshold" or not p.score.standardise or p.synthesize.source != "model":
        return
    ceiling = math.sqrt(p.synthesize.count - 1)
    if cfg.value > ceiling:
        raise ParamsError(
            f"params.yaml: filter.value: threshold {cfg.value:g} keeps nothing: standardised "
            f"scores of at most synthesize.count={p.synthesize.count} instructions are "
            f"<= {ceiling:.4g}"
        )


def check_benchmark(p: Params, root: Path) -> None:
    """The benchmark file, when it exists, holds valid preference pairs (a few hundred JSON
    rows: cheap). A missing one is :func:`check_inputs`' business."""
    path = root / p.benchmark.file
    if path.is_file():
        try:
            read_preference_file(path)
        except InputError as exc:
            raise InputError(f"params.yaml: benchmark.file: {exc}") from None


def preflight(p: Params, model_dir: Path, declared: Callable[[], Declared], root: Path) -> None:
    """Every check above, cheapest first; the first failure raises an Icon2Error."""
    check_filter(p)
    check_models(p)
    check_inputs(p, declared, root)
    check_benchmark(p, root)
    n = model_layers(p, model_dir)
    if n is not None:
        check_layers(p, n)
