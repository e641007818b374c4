"""Direction sensitivity to the feature set (ICON² appendix G).

Two direction sets for the same model — e.g. from the shipped feature instructions and from
the pipeline's own synthesized instructions, or from 128 vs 1024 features — are compared
over the controlled layers, per criterion:

* **Cosine similarity** of u^l_c from set A and set B at each controlled layer l, reported
  as mean / max / min over the layers. Directions are sign-fixed (A1), so the raw cosine
  is used, not its absolute value: a flipped direction is a real difference. Next to it,
  the minimum |cosine| and the number of flipped (cos < 0) layers tell a changed axis from
  a flipped sign: the sign rule (mean v · u > 0) is decided by the mean contrast along the
  axis, which can be small next to its spread even when the axis itself is stable.
* **Mann–Whitney U per dimension.** For each hidden dimension k, the values u^l_c[k] over
  the controlled layers form one sample per set; a two-sided U test asks whether the two
  samples come from the same distribution. The headline is the minimum p-value over the
  d dimensions (appendix G); a large minimum means no dimension differs. With d tests the
  smallest p is small by chance alone, so the Bonferroni bound min(1, d·p_min) is reported
  next to it.

Pure functions on tensors/arrays, plus :func:`feature_set_sensitivity`, which extracts
each feature set's directions with a loaded model; reading files is the stage's job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
from scipy.stats import mannwhitneyu
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.params import DirectionsParams
from icon2.steps.direction_file import DirectionFile
from icon2.steps.directions import extract

MWMethod = Literal["auto", "asymptotic", "exact"]

LAYER_SCHEMA: dict[str, pl.DataType] = {
    "criterion": pl.String(),
    "layer": pl.Int64(),
    "cosine": pl.Float64(),
}
SUMMARY_SCHEMA: dict[str, pl.DataType] = {
    "criterion": pl.String(),
    "cosine_mean": pl.Float64(),
    "cosine_max": pl.Float64(),
    "cosine_min": pl.Float64(),
    "abs_cosine_min": pl.Float64(),
    "flipped_layers": pl.Int64(),
    "mw_min_p": pl.Float64(),
    "mw_min_p_bonferroni": pl.Float64(),
    "mw_argmin_dim": pl.Int64(),
}


def layer_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of matching rows of ``a`` and ``b`` ([L, d] each) → float64 [L]."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"expected two [L, d] tensors of one shape, got {a.shape} and {b.shape}")
    cos: torch.Tensor = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)
    return cos


def mannwhitney_min_p(
    a: np.ndarray, b: np.ndarray, *, method: MWMethod = "auto"
) -> tuple[float, int, np.ndarray]:
    """Two-sided Mann–Whitney U test of every column of ``a`` against the same column of ``b``.

    Args:
        a: [n_a, d] samples (rows) of d dimensions (columns).
        b: [n_b, d], same d.
        method: SciPy's p-value method, applied to every dimension.

    Returns:
        (minimum p-value, the dimension that has it (lowest index on ties), all p-values [d]).

    Raises:
        ValueError: not 2-D, different widths, or fewer than one row on a side.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected [n_a, d] and [n_b, d] samples, got {x.shape} and {y.shape}")
    if min(x.shape[0], y.shape[0]) < 1 or x.shape[1] < 1:
        raise ValueError(f"need at least one sample and one dimension, got {x.shape}, {y.shape}")
    # One vectorised call over all d columns (SciPy loops in C over axis-slices).
    p = np.asarray(
        mannwhitneyu(x, y, alternative="two-sided", axis=0, method=method).pvalue,
        dtype=np.float64,
    )
    k = int(np.argmin(p))
    return float(p[k]), k, p


def compare_directions(
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    layers: Sequence[int],
    *,
    method: MWMethod = "auto",
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Cosines per layer and the appendix-G summary for every criterion the sets share.

    Args:
        a, b: criterion → [L, d] directions, row i being 1-based layer ``layers[i]`` (the
            controlled layers only; selecting them is the caller's job).
        layers: the layer numbers of the rows, for labelling.
        method: Mann–Whitney p-value method.

    Returns:
        (per-layer table with ``LAYER_SCHEMA`` — criterion, layer, cosine — and one summary
        row per criterion with ``SUMMARY_SCHEMA``).

    Raises:
        ValueError: no shared criterion, or a tensor whose row count is not len(layers).
    """
    shared = [c for c in a if c in b]
    if not shared:
        raise ValueError(f"the direction sets share no criterion: {sorted(a)} vs {sorted(b)}")
    per_layer: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for c in shared:
        if a[c].shape[0] != len(layers) or b[c].shape[0] != len(layers):
            raise ValueError(
                f"{c}: expected {len(layers)} layer rows, got {a[c].shape[0]} and {b[c].shape[0]}"
            )
        cos = layer_cosines(a[c], b[c]).tolist()
        per_layer += [
            {"criterion": c, "layer": int(lay), "cosine": v}
            for lay, v in zip(layers, cos, strict=True)
        ]
        p_min, dim, p = mannwhitney_min_p(
            a[c].double().numpy(), b[c].double().numpy(), method=method
        )
        summary.append(
            {
                "criterion": c,
                "cosine_mean": float(np.mean(cos)),
                "cosine_max": float(np.max(cos)),
                "cosine_min": float(np.min(cos)),
                "abs_cosine_min": float(np.min(np.abs(cos))),
                "flipped_layers": int(np.sum(np.asarray(cos) < 0)),
                "mw_min_p": p_min,
                "mw_min_p_bonferroni": min(1.0, p_min * p.size),
                "mw_argmin_dim": dim,
            }
        )
    return (
        pl.DataFrame(per_layer, schema=LAYER_SCHEMA),
        pl.DataFrame(summary, schema=SUMMARY_SCHEMA),
    )


def feature_set_sensitivity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reference: DirectionFile,
    sources: Mapping[str, list[str]],
    *,
    layers: list[int],
    cfg: DirectionsParams,
) -> tuple[dict[str, Any], pl.DataFrame]:
    """Appendix G: directions extracted from each feature set vs the ``reference`` file.

    Every criterion of the reference is extracted again from each source's instructions
    with the ``directions`` section's prompts, read position and batch size, and compared
    at ``layers`` (the controlled layers, each a row of the reference).

    Args:
        sources: source name → its feature instructions.

    Returns:
        (metrics: ``reference_features`` and, per source, features, cosine_mean, cosine_min,
        abs_cosine_min, flipped_layers and mw_min_p — the headline over criteria; the plot
        table: ``LAYER_SCHEMA`` columns criterion, layer, cosine plus source and series =
        "source:criterion", empty when there is no source).
    """
    rows = [reference.layers.index(x) for x in layers]
    ref = {c: d.direction[rows] for c, d in reference.criteria.items()}
    prompts = {c: (cfg.prompts[c].positive, cfg.prompts[c].negative) for c in reference.criteria}
    metrics: dict[str, Any] = {"reference_features": reference.meta.get("num_features")}
    frames = []
    for name, instructions in sources.items():
        dirs = extract(
            model,
            tokenizer,
            instructions,
            prompts,
            layers=layers,
            read_position=cfg.read_position,
            batch_size=cfg.batch_size,
        )
        per_layer, summary = compare_directions(
            ref, {c: d.direction for c, d in dirs.items()}, layers
        )
        frames.append(per_layer.with_columns(pl.lit(name).alias("source")))
        # Headline: a few numbers per source; per criterion and layer go to the plot file.
        metrics[name] = {
            "features": len(instructions),
            "cosine_mean": float(summary["cosine_mean"].mean()),  # type: ignore[arg-type]
            "cosine_min": float(summary["cosine_min"].min()),  # type: ignore[arg-type]
            "abs_cosine_min": float(summary["abs_cosine_min"].min()),  # type: ignore[arg-type]
            "flipped_layers": int(summary["flipped_layers"].sum()),
            "mw_min_p": float(summary["mw_min_p"].min()),  # type: ignore[arg-type]
        }
    if not frames:
        return metrics, pl.DataFrame()
    table = pl.concat(frames)
    return metrics, table.with_columns(
        (pl.col("source") + ":" + pl.col("criterion")).alias("series")
    )


def sensitivity_lines(metrics: Mapping[str, Any], layers: Sequence[int]) -> list[str]:
    """One report line per source of :func:`feature_set_sensitivity`' metrics."""
    return [
        f"sensitivity {name} ({m['features']} features, layers {layers[0]}..{layers[-1]}):"
        f" cosine mean {m['cosine_mean']:.4f}, min {m['cosine_min']:.4f}"
        f" (|cosine| min {m['abs_cosine_min']:.4f}, {m['flipped_layers']} flipped"
        " criterion-layers);"
        f" Mann-Whitney min p {m['mw_min_p']:.3g}"
        for name, m in metrics.items()
        if name != "reference_features"
    ]
