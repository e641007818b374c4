"""A battery of bad inputs across every stage (issue 9).

Each case breaks one thing — a params value, a file, a table, a tensor file or a model
directory — and asserts what a user sees: exit status 2, exactly one ``error:`` line that
names the file or key and what was expected, no traceback, and every output that existed
before the run (and every shared input) byte-identical afterwards, with no stray files.

The upstream artifacts are built once per module; almost every case fails before a model
is loaded, so the battery stays fast.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from icon2.core.io import PROVENANCE_KEY, read_provenance, text_id
from icon2.core.tables import INSTRUCTION_SCHEMA, write_table
from tests.conftest import REPO, deep_update, load_stage, run_stage
from tests.stages.test_directions import FEATURES

OUTPUTS: dict[str, dict[str, str]] = {
    "model": {"out": "model"},
    "directions": {"out": "dir.safetensors", "metrics": "dir.json", "plots": "evr"},
    "synthesize": {"out": "instr.parquet", "metrics": "synth.json"},
    "score": {"out": "scores.parquet", "plots": "scores.csv"},
    "filter": {"out": "kept.parquet", "metrics": "filter.json"},
    "pairs": {"out": "pairs.parquet", "metrics": "pairs.json"},
    "train": {"out": "ckpt", "metrics": "train.json", "live": "live"},
    "evaluate": {
        "out": "eval.json",
        "samples": "samples.jsonl",
        "details": "details.json",
        "plots": "outcomes.csv",
        "alpaca_eval": "alpaca",
    },
    "spa": {"out": "spa1"},
}
# The inputs each stage takes, as (option, key in the world).
INPUTS: dict[str, list[tuple[str, str]]] = {
    "model": [],
    "directions": [("model-dir", "model"), ("features", "features")],
    "synthesize": [("model-dir", "model"), ("file", "features")],
    "score": [("model-dir", "model"), ("directions", "directions"), ("instructions", "instr")],
    "filter": [("scores", "scores")],
    "pairs": [("model-dir", "model"), ("directions", "directions"), ("kept", "kept")],
    "train": [("model-dir", "model"), ("pairs", "pairs")],
    "evaluate": [
        ("base-dir", "model"),
        ("trained-dir", "model"),
        ("prompts", "kept"),
        ("directions", "directions"),
    ],
    "spa": [("init-dir", "model"), ("previous", "model"), ("prompts", "kept")],
}


def _outputs(stage: str) -> dict[str, str]:
    """The stage's output options (as its entry point declares them) and their file names;
    a required option this table does not know is an output directory of that name."""
    params = inspect.signature(load_stage(stage).main).parameters
    inputs = {o.replace("-", "_") for o, _ in INPUTS[stage]} | {"params", "iteration", "cost"}
    known = {k: v for k, v in OUTPUTS[stage].items() if k in params}
    extra = {
        k: k
        for k, v in params.items()
        if k not in inputs and k not in known and v.default is inspect.Parameter.empty
    }
    return {**known, **extra}


def _digest(root: Path) -> dict[str, str]:
    """Every file under root (hidden ones included) and its SHA-256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tiny_stage_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Good upstream artifacts, built once: directions, instructions, scores, kept, pairs."""
    root = tmp_path_factory.mktemp("bad_inputs_world")
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["directions"]["batch_size"] = 4
    data["synthesize"].update(source="file", min_chars=1, near_dup_threshold=None)
    data["filter"].update(value=1.0, validation_fraction=0.25)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    feats = root / "features.jsonl"
    feats.write_text("".join(json.dumps({"instruction": x}) + "\n" for x in FEATURES))
    w: dict[str, Any] = {
        "root": root,
        "data": data,
        "params": params,
        "model": tiny_stage_model,
        "features": feats,
    }
    up = root / "up"
    r = run_stage(
        "directions",
        "--model-dir",
        tiny_stage_model,
        "--features",
        feats,
        "--out",
        up / "dir.safetensors",
        "--metrics",
        up / "dir.json",
        "--plots",
        up / "evr",
        "--params",
        params,
    )
    assert r.exit_code == 0, r.output
    instr = pl.DataFrame(
        {
            "id": [text_id(x) for x in FEATURES],
            "instruction": FEATURES,
            "token_count": [len(x.split()) for x in FEATURES],
            "finish_reason": ["stop"] * len(FEATURES),
            "seed": [0] * len(FEATURES),
        },
        schema=INSTRUCTION_SCHEMA,
    )
    write_table(up / "instr.parquet", instr, INSTRUCTION_SCHEMA, {"stage": "synthesize"})
    r = run_stage(
        "score",
        "--model-dir",
        tiny_stage_model,
        "--directions",
        up / "dir.safetensors",
        "--instructions",
        up / "instr.parquet",
        "--out",
        up / "scores.parquet",
        "--plots",
        up / "scores.csv",
        "--params",
        params,
    )
    assert r.exit_code == 0, r.output
    r = run_stage(
        "filter",
        "--scores",
        up / "scores.parquet",
        "--out",
        up / "kept.parquet",
        "--metrics",
        up / "filter.json",
        "--params",
        params,
    )
    assert r.exit_code == 0, r.output

    def msg(role: str, text: str) -> list[dict[str, str]]:
        return [{"role": role, "content": text}]

    pairs = pl.DataFrame(
        {
            "prompt": [msg("user", q) for q in FEATURES[:4]],
            "chosen": [msg("assistant", f"A careful answer to {i}.") for i in range(4)],
            "rejected": [msg("assistant", f"A sloppy answer to {i}.") for i in range(4)],
        }
    )
    pairs.write_parquet(up / "pairs.parquet")
    w.update(
        directions=up / "dir.safetensors",
        instr=up / "instr.parquet",
        scores=up / "scores.parquet",
        kept=up / "kept.parquet",
        pairs=up / "pairs.parquet",
    )
    return w


@dataclass
class Ctx:
    """What a case may change: its own copies of inputs, params overrides, extra args."""

    world: dict[str, Any]
    dir: Path
    inputs: dict[str, Path] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    params_text: str | None = None
    extra: list[str] = field(default_factory=list)

    def copy(self, key: str, name: str | None = None) -> Path:
        """A private copy of a world input (file or directory), used instead of it."""
        src: Path = self.world[key]
        dst = self.dir / "in" / (name or src.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)
        self.inputs[key] = dst
        return dst

    def new(self, key: str, name: str) -> Path:
        """A fresh path used instead of a world input (the case writes it, or not)."""
        dst = self.dir / "in" / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        self.inputs[key] = dst
        return dst


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # params | files | tables | tensors | models
    stage: str
    setup: Callable[[Ctx], None]
    expect: tuple[str, ...]  # substrings of the error line ("{key}" = that input's path)


def _p(**over: Any) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        c.params = deep_update(c.params, over)

    return setup


def _text_params(edit: Callable[[str], str]) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        c.params_text = edit(c.world["params"].read_text())

    return setup


def _truncate(key: str, name: str | None = None, keep: float = 0.5) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        path = c.copy(key)
        if name:
            path = path / name
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    return setup


def _write(key: str, name: str, content: bytes | None) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        path = c.new(key, name)
        if content is not None:
            path.write_bytes(content)

    return setup


def _frame(key: str, change: Callable[[pl.DataFrame], pl.DataFrame]) -> Callable[[Ctx], None]:
    """A copy of a world table, changed, keeping its provenance."""

    def setup(c: Ctx) -> None:
        src: Path = c.world[key]
        frame = change(pl.read_parquet(src))
        dst = c.new(key, src.name)
        meta = json.dumps(read_provenance(src), sort_keys=True)
        frame.write_parquet(dst, metadata={PROVENANCE_KEY: meta})

    return setup


def _directions(
    change: Callable[[dict[str, torch.Tensor], dict[str, Any]], None],
) -> Callable[[Ctx], None]:
    """A copy of the world's directions file with its tensors/metadata changed."""

    def setup(c: Ctx) -> None:
        src: Path = c.world["directions"]
        tensors, meta = load_file(str(src)), read_provenance(src)
        change(tensors, meta)
        dst = c.new("directions", src.name)
        save_file(tensors, str(dst), metadata={PROVENANCE_KEY: json.dumps(meta, sort_keys=True)})

    return setup


def _model(change: Callable[[Path], None]) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        change(c.copy("model", "model"))

    return setup


def _jsonl(*rows: Any) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _set_null(column: str) -> Callable[[pl.DataFrame], pl.DataFrame]:
    return lambda f: f.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col(column)).alias(column)
    )


def _rename_criterion(f: pl.DataFrame) -> pl.DataFrame:
    """A kept table of another criteria set: 'honesty' is called 'secret' throughout."""
    f = f.rename({"raw_honesty": "raw_secret", "std_honesty": "std_secret"})
    return f.with_columns(pl.col("criterion").str.replace("^honesty$", "secret"))


def _bad_provenance(key: str) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        src: Path = c.world[key]
        pl.read_parquet(src).write_parquet(
            c.new(key, src.name), metadata={PROVENANCE_KEY: "{not json"}
        )

    return setup


def _widen(t: dict[str, torch.Tensor], m: dict[str, Any]) -> None:
    for c in m["criteria"]:
        t[c] = torch.cat([t[c], torch.zeros(t[c].shape[0], 8)], dim=1)


def _drop_row(t: dict[str, torch.Tensor], m: dict[str, Any]) -> None:
    c = m["criteria"][0]
    t[c] = t[c][1:].contiguous()


def _nan(t: dict[str, torch.Tensor], m: dict[str, Any]) -> None:
    t[m["criteria"][0]][0, 0] = float("nan")


def _card(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        card = json.loads((d / "icon2_model.json").read_text())
        change(card)
        (d / "icon2_model.json").write_text(json.dumps(card))

    return edit


def _model_stage_source(make: Callable[[Path], None]) -> Callable[[Ctx], None]:
    """base.model points at a directory the case builds (or leaves absent)."""

    def setup(c: Ctx) -> None:
        src = c.dir / "in" / "src_model"
        src.parent.mkdir(parents=True, exist_ok=True)
        make(src)
        c.params = deep_update(c.params, {"base": {"model": str(src)}})

    return setup


def _tiny_source(change: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(src: Path) -> None:
        from tests.tiny import build_tiny_model

        build_tiny_model(src, num_layers=2)
        change(src)

    return make


def _reward_model_without_config(c: Ctx) -> None:
    rm = c.dir / "in" / "rm"
    rm.mkdir(parents=True)
    c.params = deep_update(c.params, {"evaluate": {"reward_model": str(rm)}})


def _dup_section(text: str) -> str:
    return text + "\nbase:\n  seed: 1\n"


def _dup_key(text: str) -> str:
    return text.replace("filter:\n", "filter:\n  value: 0.5\n", 1)


CASES = [
    # --- params: silent acceptance, wrong types, bounds, duplicates ---
    Case("gamma-nan", "params", "pairs", _p(pairs={"gamma_pos": float("nan")}),
         ("pairs.gamma_pos", "finite")),
    Case("dro-eps-inf", "params", "train", _p(train={"dro": {"eps": float("inf")}}),
         ("train.dro.eps", "finite")),
    Case("tie-margin-nan", "params", "evaluate", _p(evaluate={"tie_margin": float("nan")}),
         ("evaluate.tie_margin", "finite")),
    Case("batch-true", "params", "pairs", _p(pairs={"batch_size": True}),
         ("pairs.batch_size", "integer")),
    Case("epochs-true", "params", "train", _p(train={"num_train_epochs": True}),
         ("train.num_train_epochs", "number")),
    Case("value-string", "params", "filter", _p(filter={"value": "0.5"}),
         ("filter.value", "number")),
    Case("lr-string", "params", "train", _p(train={"learning_rate": "fast"}),
         ("train.learning_rate", "number")),
    Case("model-empty", "params", "model", _p(base={"model": ""}),
         ("base.model", "must name a model")),
    Case("model-blank", "params", "model", _p(base={"model": "   "}),
         ("base.model", "must name a model")),
    Case("seed-2e70", "params", "filter", _p(base={"seed": 2**70}), ("base.seed", "32 bits")),
    Case("synth-seed-2e32", "params", "synthesize", _p(synthesize={"seed": 2**32}),
         ("synthesize.seed", "32 bits")),
    Case("seed-negative", "params", "score", _p(base={"seed": -1}),
         ("base.seed", "greater than or equal to 0")),
    Case("section-twice", "params", "score", _text_params(_dup_section),
         ("params.yaml", "'base' is written twice")),
    Case("key-twice", "params", "filter", _text_params(_dup_key),
         ("params.yaml", "'value' is written twice")),
    Case("unknown-key", "params", "train", _p(train={"lr": 0.1}), ("train.lr", "unknown key")),
    Case("not-a-mapping", "params", "filter", _text_params(lambda t: "- a\n- b\n"),
         ("params.yaml", "mapping")),
    Case("directions-layers-empty", "params", "directions", _p(directions={"layers": []}),
         ("directions.layers", "empty")),
    Case("score-layers-empty", "params", "score", _p(score={"layers": []}),
         ("score.layers", "empty")),
    Case("pairs-layer-99", "params", "pairs", _p(pairs={"layers": [99]}), ("pairs.layers", "99")),
    Case("rule-unknown", "params", "filter", _p(filter={"rule": "best"}), ("filter.rule",)),
    # --- files: missing, wrong format, suffix lies ---
    Case("scores-missing", "files", "filter", _write("scores", "scores.parquet", None),
         ("{scores}", "not found")),
    Case("scores-suffix-lies", "files", "filter",
         _write("scores", "scores.parquet", b'{"id": 1}\n'),
         ("{scores}", "not a readable Parquet")),
    Case("kept-truncated", "files", "pairs", _truncate("kept"), ("{kept}", "Parquet")),
    Case("instr-missing", "files", "score", _write("instr", "instr.parquet", None),
         ("{instr}", "not found")),
    Case("features-missing", "files", "directions", _write("features", "f.jsonl", None),
         ("{features}", "not found")),
    Case("features-bad-json", "files", "directions",
         _write("features", "f.jsonl", b'{"instruction": "a"}\n{oops\n'), ("{features}", "line 2")),
    Case("features-not-utf8", "files", "directions", _write("features", "f.jsonl", b"\xff\xfe\x00"),
         ("{features}", "UTF-8")),
    Case("features-csv-as-parquet", "files", "synthesize",
         _write("features", "f.parquet", b"instruction\nhello\n"), ("{features}", "Parquet")),
    Case("pairs-missing", "files", "train", _write("pairs", "p.parquet", None),
         ("{pairs}", "not found")),
    Case("pairs-suffix-lies", "files", "train", _write("pairs", "p.parquet", b"not parquet"),
         ("{pairs}", "not a readable")),
    Case("prompts-missing", "files", "spa", _write("kept", "prompts.jsonl", None),
         ("{kept}", "not found")),
    Case("params-missing", "files", "filter",
         lambda c: setattr(c, "extra", ["--params", str(c.dir / "nope.yaml")]),
         ("nope.yaml", "params file not found")),
    # --- tables: empty, null, schema, degenerate results ---
    Case("scores-0-rows", "tables", "filter", _frame("scores", lambda f: f.head(0)),
         ("{scores}", "0 rows")),
    Case("scores-no-column", "tables", "filter", _frame("scores", lambda f: f.drop("margin")),
         ("{scores}", "'margin'")),
    Case("scores-null-instruction", "tables", "filter", _frame("scores", _set_null("instruction")),
         ("{scores}", "row 1", "'instruction'")),
    Case("filter-keeps-0", "tables", "filter", _p(filter={"rule": "threshold", "value": 1e9}),
         ("filter.rule=threshold", "keeps 0")),
    Case("instr-0-rows", "tables", "score", _frame("instr", lambda f: f.head(0)),
         ("{instr}", "0 rows")),
    Case("instr-null", "tables", "score", _frame("instr", _set_null("instruction")),
         ("{instr}", "row 1", "'instruction'")),
    Case("instr-wrong-type", "tables", "score",
         _frame("instr", lambda f: f.with_columns(pl.col("seed").cast(pl.String))),
         ("{instr}", "'seed'", "expected Int64")),
    Case("kept-0-rows", "tables", "pairs", _frame("kept", lambda f: f.head(0)),
         ("{kept}", "0 rows")),
    Case("kept-unknown-criterion", "tables", "pairs",
         _frame("kept", lambda f: f.with_columns(pl.lit("secret").alias("criterion"))),
         ("{kept}", "'secret'")),
    Case("kept-criterion-not-in-directions", "tables", "pairs", _frame("kept", _rename_criterion),
         ("{kept}", "criteria ['secret'] have no direction", "{directions}")),
    Case("scores-provenance-not-json", "tables", "filter", _bad_provenance("scores"),
         ("{scores}", "metadata is not JSON")),
    Case("kept-bad-split", "tables", "pairs",
         _frame("kept", lambda f: f.with_columns(pl.lit("test").alias("split"))),
         ("{kept}", "'split'", "train")),
    Case("kept-null-criterion", "tables", "pairs", _frame("kept", _set_null("criterion")),
         ("{kept}", "'criterion'")),
    Case("features-null", "tables", "directions",
         _write("features", "f.jsonl", _jsonl({"instruction": "a b c"}, {"instruction": None})),
         ("{features}", "row 2")),
    Case("features-one", "tables", "directions",
         _write("features", "f.jsonl", _jsonl({"instruction": "only one"})),
         ("{features}", "at least 2")),
    Case("synth-drops-all", "tables", "synthesize",
         _p(synthesize={"min_chars": 390, "max_chars": 400}),
         ("synthesize", "all 8 samples were dropped", "too_short")),
    Case("pairs-identical", "tables", "train",
         _frame("pairs", lambda f: f.with_columns(pl.col("chosen").alias("rejected"))),
         ("{pairs}", "row 1", "identical")),
    Case("pairs-0-rows", "tables", "train", _frame("pairs", lambda f: f.head(0)),
         ("{pairs}", "no rows")),
    Case("prompts-null", "tables", "evaluate",
         _frame("kept", lambda f: f.with_columns(pl.lit(None, pl.String).alias("instruction"))),
         ("{kept}", "'instruction'")),
    # --- tensors: the directions file ---
    Case("dir-missing", "tensors", "score", _write("directions", "d.safetensors", None),
         ("{directions}", "not found")),
    Case("dir-truncated", "tensors", "score", _truncate("directions"),
         ("{directions}", "not a readable safetensors")),
    Case("dir-is-parquet", "tensors", "pairs",
         lambda c: shutil.copyfile(c.world["kept"], c.new("directions", "d.safetensors")),
         ("{directions}", "not a readable safetensors")),
    Case("dir-no-layers", "tensors", "score", _directions(lambda t, m: m.pop("layers")),
         ("{directions}", "'layers'")),
    Case("dir-no-criteria", "tensors", "pairs", _directions(lambda t, m: m.pop("criteria")),
         ("{directions}", "'criteria'")),
    Case("dir-hidden-size", "tensors", "score", _directions(_widen),
         ("{directions}", "hidden size 72", "has 64")),
    Case("dir-other-model", "tensors", "pairs",
         _directions(lambda t, m: m.update(weights_sha256="0" * 64)),
         ("{directions}", "computed on model")),
    Case("dir-short-tensor", "tensors", "score", _directions(_drop_row),
         ("{directions}", "shape", "one row per layer")),
    Case("dir-missing-stat", "tensors", "pairs",
         _directions(lambda t, m: t.pop(f"{m['criteria'][0]}:evr")),
         ("{directions}", ":evr")),
    Case("dir-nan", "tensors", "score", _directions(_nan), ("{directions}", "NaN")),
    # --- models ---
    Case("model-dir-missing", "models", "score", _write("model", "nomodel", None),
         ("{model}", "model directory not found")),
    Case("card-not-json", "models", "pairs",
         _model(lambda d: (d / "icon2_model.json").write_text("{not json")),
         ("icon2_model.json", "not a JSON model card")),
    Case("card-no-hidden-size", "models", "score", _model(_card(lambda c: c.pop("hidden_size"))),
         ("icon2_model.json", "'hidden_size'")),
    Case("card-missing", "models", "evaluate",
         _model(lambda d: (d / "icon2_model.json").unlink()), ("{model}", "icon2_model.json")),
    Case("weights-truncated", "models", "directions", _truncate("model", "model.safetensors"),
         ("model.safetensors", "not a complete safetensors")),
    Case("config-not-json", "models", "train",
         _model(lambda d: (d / "config.json").write_text("{")), ("config.json", "not valid JSON")),
    Case("no-weights", "models", "directions",
         _model(lambda d: (d / "model.safetensors").unlink()), ("{model}", "no weight files")),
    Case("base-model-missing", "models", "model", _p(base={"model": "/nonexistent/model"}),
         ("base.model", "no such model directory")),
    Case("base-model-no-config", "models", "model", _model_stage_source(lambda d: d.mkdir()),
         ("base.model", "no config.json")),
    Case("base-model-truncated", "models", "model",
         _model_stage_source(_tiny_source(lambda d: (d / "model.safetensors").write_bytes(b"x"))),
         ("model.safetensors", "not a complete safetensors")),
    Case("judge-missing", "models", "evaluate", _p(evaluate={"judge": "/nonexistent/judge"}),
         ("evaluate.judge", "no such model directory")),
    Case("reward-model-no-config", "models", "evaluate", _reward_model_without_config,
         ("evaluate.reward_model", "no config.json")),
    Case("spa-iteration-unknown", "params", "spa", lambda c: c.extra.extend(["--iteration", "7"]),
         ("spa.iterations", "'7'")),
]  # fmt: skip


def _run(case: Case, world: dict[str, Any], tmp_path: Path) -> tuple[Any, Ctx, dict[str, str]]:
    c = Ctx(world=world, dir=tmp_path)
    case.setup(c)
    params = tmp_path / "params.yaml"
    if c.params_text is not None:
        params.write_text(c.params_text)
    else:
        params.write_text(yaml.safe_dump(deep_update(world["data"], c.params)))
    # Outputs of a previous good run: they must survive the failure byte for byte.
    out = tmp_path / "out"
    args: list[str | Path] = []
    for option, name in _outputs(case.stage).items():
        path = out / name
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"good {name}\n".encode())
        else:
            path.mkdir(parents=True)
            (path / "kept.txt").write_text("good\n")
        args += [f"--{option.replace('_', '-')}", path]
    for option, key in INPUTS[case.stage]:
        args += [f"--{option}", c.inputs.get(key, world[key])]
    if case.stage == "spa" and "--iteration" not in c.extra:
        args += ["--iteration", "1"]
    if "--params" not in c.extra:
        args += ["--params", params]
    before = _digest(tmp_path)
    result = run_stage(case.stage, *args, *c.extra)
    return result, c, before


@pytest.mark.parametrize("case", CASES, ids=[f"{c.kind}-{c.stage}-{c.id}" for c in CASES])
def test_bad_input(case: Case, world: dict[str, Any], tmp_path: Path) -> None:
    world_before = _digest(world["root"]), _digest(world["model"])
    result, c, before = _run(case, world, tmp_path)
    output = result.output
    assert "Traceback" not in output, output
    assert result.exit_code == 2, (result.exit_code, output, result.exception)
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    for want in case.expect:
        if want.startswith("{"):
            key = want.strip("{}")
            want = str(c.inputs.get(key, world[key]))
        assert want in lines[0], (want, lines[0])
    # Nothing written, nothing lost: outputs, inputs and the shared world are unchanged.
    assert _digest(tmp_path) == before
    assert (_digest(world["root"]), _digest(world["model"])) == world_before


def test_battery_size() -> None:
    kinds = {k: sum(c.kind == k for c in CASES) for k in ("params", "files", "tables")}
    kinds.update({k: sum(c.kind == k for c in CASES) for k in ("tensors", "models")})
    assert len({c.id for c in CASES}) == len(CASES) >= 40
    assert all(n >= 5 for n in kinds.values()), kinds
    assert {c.stage for c in CASES} == set(OUTPUTS)
