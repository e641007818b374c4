"""Layer lists: 1-based decoder layers, the paper's default controlled range, one resolver.

Layer l is the output of decoder block l (HF ``hidden_states[l]``), l = 1..N. Every stage
turns a ``layers`` param into a concrete list with :func:`resolve_layers`, so an empty
list, a layer outside the model or a layer the directions file lacks gives the same kind
of one-line error everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from icon2.core.errors import ModelError


def check_layers(layers: list[int], num_layers: int, key: str) -> None:
    """Layers are 1-based (layer l = output of decoder block l, HF ``hidden_states[l]``)."""
    if not layers:
        raise ModelError(f"{key}: the layer list is empty")
    bad = [layer for layer in layers if not 1 <= layer <= num_layers]
    if bad:
        raise ModelError(
            f"{key}: layer(s) {bad} are outside the model, which has layers 1..{num_layers}"
        )


def middle_third(num_layers: int) -> list[int]:
    """The paper's controlled layers (METHOD A4): the middle of the network.

    The paper publishes 10..20 for its 28–32-layer 7–8B models, 12..24 for a 36-layer model
    and 16..32 for a 48-layer one. Those are used as published; any other depth gets the
    same rule as the 36- and 48-layer cases, N//3 .. 2N//3 (30 layers → 10..20 as well):

    ====== ========
    layers range
    ====== ========
    28     10..20
    30     10..20
    32     10..20
    36     12..24
    48     16..32
    ====== ========
    """
    if 28 <= num_layers <= 32:
        return list(range(10, 21))
    lo, hi = num_layers // 3, (2 * num_layers) // 3
    return list(range(max(lo, 1), max(hi, 1) + 1))


def resolve_layers(
    requested: Sequence[int] | None,
    num_layers: int,
    key: str,
    *,
    default: str = "all",
    within: Sequence[int] | None = None,
    source: str = "",
) -> list[int]:
    """The concrete, sorted layer list for a ``layers`` param.

    Args:
        requested: the param's value; None = ``default`` ("all" or "middle").
        num_layers: N, the model's decoder layers.
        key: the params key, named in errors.
        within: layers that are available (e.g. the rows of a directions file); every
            requested layer must be one of them.
        source: the file ``within`` came from, named in errors.

    Raises:
        ModelError: on an empty list, a layer outside 1..N, a repeated layer, or layers
            missing from ``within``.
    """
    if requested is None:
        layers = list(range(1, num_layers + 1)) if default == "all" else middle_third(num_layers)
        if within is not None:
            layers = [layer for layer in layers if layer in set(within)]
    else:
        layers = list(requested)
        if len(set(layers)) != len(layers):
            raise ModelError(f"{key}: layers {layers} repeat a layer")
    check_layers(layers, num_layers, key)
    if within is not None:
        missing = [layer for layer in layers if layer not in set(within)]
        if missing:
            have = sorted(within)
            span = f"{have[0]}..{have[-1]}" if have else "none"
            raise ModelError(
                f"{key}: layer(s) {missing} are not in {source or 'the directions file'} "
                f"(it has layers {span}); choose layers it has or rerun `dvc repro directions` "
                f"with directions.layers covering them"
            )
    return sorted(layers)
