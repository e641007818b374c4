"""The `check` stage's judgement (icon2.core.preflight): what params.yaml asks for that no
run can give, found before any model is loaded. The DVC side is tests/stages/test_check.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from icon2.core.errors import Icon2Error, InputError, ModelError, ParamsError
from icon2.core.params import load_params
from icon2.core.preflight import MODEL_CARD, Declared, model_layers, preflight

REPO = Path(__file__).resolve().parents[2]


def _nothing() -> Declared:
    return Declared([], [])


def _check(params: Path, root: Path, declared: Callable[[], Declared] = _nothing) -> None:
    preflight(load_params(params), root / "data/model", declared, root)


def _everything(root: Path) -> Callable[[], Declared]:
    """A stage reads every path under ``root`` and one writes them all."""
    return lambda: Declared([root.resolve()], [root.resolve()])


@pytest.mark.parametrize("key", ["pairs", "synthesize", "select"])
def test_an_answer_budget_of_one_token_is_refused(
    write_params: Callable[..., Path], key: str
) -> None:
    with pytest.raises(ParamsError, match=rf"{key}\.max_new_tokens: must be >= 2: .*\(got 1\)"):
        load_params(write_params({key: {"max_new_tokens": 1}}))
    assert load_params(write_params({key: {"max_new_tokens": 2}}))


def test_a_missing_input_is_named_unless_a_stage_writes_it(
    write_params: Callable[..., Path], tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data/features.jsonl").write_text('{"instruction": "Hi?"}\n')
    data = tmp_path.resolve() / "data"
    params = write_params({"directions": {"features": "bad/missing.jsonl"}})
    read_missing = tmp_path.resolve() / "bad/missing.jsonl"
    with pytest.raises(InputError, match=r"directions\.features: bad/missing\.jsonl does not"):
        _check(params, tmp_path, lambda: Declared([data], [read_missing]))
    _check(params, tmp_path, lambda: Declared([data], []))  # no stage reads it
    _check(write_params(), tmp_path, lambda: Declared([data], [data]))
    # A path that a stage reads and none writes is named.
    pairs = data / "pairs/pairs.parquet"
    with pytest.raises(InputError, match=r"train\.pairs: data/pairs/pairs\.parquet"):
        _check(write_params(), tmp_path, lambda: Declared([], [pairs]))


def test_a_model_path_that_is_not_a_model_directory(
    write_params: Callable[..., Path], tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"base\.model: './nope': no such model directory"):
        _check(write_params({"base": {"model": "./nope"}}), tmp_path)
    judge = str(tmp_path / "empty")
    with pytest.raises(ModelError, match=r"evaluate\.judge: .* has no config\.json"):
        _check(write_params({"evaluate": {"judge": judge}}), tmp_path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"pairs": {"layers": [2, 99]}}, r"pairs\.layers: layer\(s\) \[99\] are outside the model"),
        ({"directions": {"layers": [0]}}, r"directions\.layers: layer\(s\) \[0\]"),
        (
            {"directions": {"layers": [1]}, "score": {"layers": [2]}},
            r"score\.layers: layer\(s\) \[2\] are not in the directions",
        ),
        # A 3-layer model's default controlled layers (1..2): none is among directions at 3.
        ({"directions": {"layers": [3]}}, r"pairs\.layers: the layer list is empty"),
    ],
)
def test_layers_outside_the_model_are_refused(
    write_params: Callable[..., Path],
    tiny_model_dir: Path,
    override: dict[str, object],
    message: str,
) -> None:
    base = {"base": {"model": str(tiny_model_dir)}}
    p = load_params(write_params({**base, **override}))
    with pytest.raises(Icon2Error, match=message):
        preflight(p, REPO / "absent", _everything(REPO), REPO)
    preflight(load_params(write_params(base)), REPO / "absent", _everything(REPO), REPO)


def test_layer_count_comes_from_config_or_the_same_models_card(
    write_params: Callable[..., Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    p = load_params(write_params({"base": {"model": str(tiny_model_dir)}}))
    assert model_layers(p, tmp_path) == 3  # tiny.py's model, from its config.json
    builtin = load_params(write_params())
    assert model_layers(builtin, tmp_path) is None  # a first run: nothing to read yet
    card = {"name": builtin.base.model, "revision": None, "num_layers": 30}
    (tmp_path / MODEL_CARD).write_text(json.dumps(card))
    assert model_layers(builtin, tmp_path) == 30
    (tmp_path / MODEL_CARD).write_text(json.dumps({**card, "name": "another"}))
    assert model_layers(builtin, tmp_path) is None  # stale: the model stage will rerun


def test_a_threshold_no_standardised_score_reaches(write_params: Callable[..., Path]) -> None:
    # z-scores of n values are at most sqrt(n - 1): 3 of 10 instructions, never 4.
    over = {"synthesize": {"count": 10}, "filter": {"rule": "threshold", "value": 3.5}}
    with pytest.raises(ParamsError, match=r"filter\.value: threshold 3\.5 keeps nothing"):
        preflight(load_params(write_params(over)), REPO / "absent", _everything(REPO), REPO)
    over["filter"]["value"] = 2.9
    preflight(load_params(write_params(over)), REPO / "absent", _everything(REPO), REPO)


def test_a_malformed_benchmark_file_is_named_with_its_row(
    write_params: Callable[..., Path], tmp_path: Path
) -> None:
    bench = tmp_path / "bench.jsonl"
    good = {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}
    bench.write_text(json.dumps(good) + "\n" + json.dumps({**good, "rejected": "Hello."}) + "\n")
    params = write_params({"benchmark": {"file": str(bench)}})
    with pytest.raises(InputError, match=r"benchmark\.file: .*bench\.jsonl: row 2: .*identical"):
        _check(params, tmp_path, _everything(tmp_path))
    bench.write_text(json.dumps(good) + "\n")
    _check(params, tmp_path, _everything(tmp_path))
    # The shipped file passes (the repository's own params).
    preflight(load_params(REPO / "params.yaml"), REPO / "absent", _everything(REPO), REPO)
