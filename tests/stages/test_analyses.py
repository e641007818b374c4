"""The comparison's analysis stages on the tiny model: leakage (App. D), sensitivity
(App. G), the judge-free signals and the one comparison table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from icon2.core.tables import PAIR_SCHEMA, write_table
from tests.conftest import run_stage
from tests.stages.test_comparison import _params, comp  # noqa: F401  (module fixture)

LONG = (
    "explain in simple words how the water cycle moves water from the oceans to the clouds "
    "and back to the rivers"
)


def _pairs(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """(split, instruction, chosen, rejected) rows as a PAIR_SCHEMA table."""
    data = [
        {
            "id": f"p{i}",
            "split": split,
            "criterion": "general",
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": x}],
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
            "gamma_pos": 0.1,
            "gamma_neg": -0.05,
            "gamma_scale": "contrastive_norm",
            "layers": [2],
            "chosen_tokens": 3,
            "rejected_tokens": 3,
            "chosen_finish": "stop",
            "rejected_finish": "stop",
        }
        for i, (split, x, c, r) in enumerate(rows)
    ]
    write_table(path, pl.DataFrame(data, schema=PAIR_SCHEMA), PAIR_SCHEMA, {})
    return path


@pytest.mark.parametrize("threshold", [None, 0.9])
def test_leakage_flags_a_shared_13_gram(
    comp: dict[str, Any],  # noqa: F811
    tmp_path: Path,
    threshold: float | None,
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    texts = [f"Please {LONG}.", "What is the capital of France?", "Name three prime numbers."]
    prompts.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in texts))
    training = _pairs(
        tmp_path / "pairs.parquet",
        [
            ("train", "Tell me about rain.", f"Sure: {LONG.upper()}!", "No."),
            ("train", "Sort a list.", "Use sorted().", "Do it by hand."),
            ("validation", "Name three prime numbers.", "2, 3, 5.", "1, 4, 6."),  # not audited
        ],
    )
    over = {"leakage": {"embedding_threshold": threshold}}
    r = run_stage(
        "leakage",
        "--prompts",
        prompts,
        "--training",
        training,
        "--out",
        tmp_path / "m.json",
        "--offending",
        tmp_path / "off.csv",
        "--params",
        _params(comp, tmp_path, over),
    )
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["prompts"] == 3 and m["ngram_leaked"] == 1 and m["training_texts"] == 6
    off = pl.read_csv(tmp_path / "off.csv")
    assert off["prompt"][0] == texts[0]
    if threshold is not None:
        assert "embedding_flagged" in m and "max_cosine" in off.columns


def test_sensitivity_compares_feature_sets(comp: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    feats = tmp_path / "f.jsonl"
    from tests.stages.test_directions import FEATURES

    feats.write_text("".join(json.dumps({"instruction": x}) + "\n" for x in FEATURES))
    over = {
        "sensitivity": {
            "sources": {
                "same": {"file": str(feats), "max_features": None},
                "half": {"file": str(feats), "max_features": len(FEATURES) // 2},
            }
        }
    }
    params = _params(comp, tmp_path)
    data = yaml.safe_load(params.read_text())
    data["sensitivity"] = over["sensitivity"]  # replace the shipped sources, do not merge
    params.write_text(yaml.safe_dump(data))
    r = run_stage(
        "sensitivity",
        "--model-dir",
        comp["model"],
        "--directions",
        comp["directions"],
        "--out",
        tmp_path / "m.json",
        "--plots",
        tmp_path / "cos.csv",
        "--params",
        params,
    )
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "m.json").read_text())
    # The same features give the reference directions back.
    assert m["same"]["cosine_min"] == pytest.approx(1.0, abs=1e-4)
    assert m["half"]["cosine_min"] <= m["same"]["cosine_min"] + 1e-6
    assert 0.0 < m["half"]["mw_min_p"] <= 1.0
    cos = pl.read_csv(tmp_path / "cos.csv")
    assert set(cos["source"]) == {"same", "half"} and set(cos["layer"]) == {1, 2}


def test_signals_score_every_method_on_the_common_held_out_set(
    comp: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    ours = _pairs(
        tmp_path / "a.parquet",
        [
            ("train", "Sort a list.", "Use sorted().", "Do it by hand."),
            ("validation", "Name a prime.", "2.", "4."),
        ],
    )
    theirs = _pairs(
        tmp_path / "b.parquet",
        [
            ("validation", "Capital of France?", "Paris.", "Rome."),
            ("validation", "Name a prime.", "2.", "4."),  # the same pair: counted once
        ],
    )
    evaluation = tmp_path / "evaluate.json"
    evaluation.write_text(json.dumps({"tie_rate": 1.0, "win_rate": 0.5}))

    def signals(pool: dict[str, Path], out: Path, root: Path = tmp_path) -> Any:
        params = _params(comp, tmp_path)
        data = yaml.safe_load(params.read_text())
        data["compare"]["methods"] = {m: str(f) for m, f in pool.items()}  # replaced, not merged
        params.write_text(yaml.safe_dump(data))
        return run_stage(
            "signals",
            "--model-dir",
            comp["model"],
            "--trained-dir",
            comp["model"],
            "--pool-root",
            root,
            "--evaluation",
            evaluation,
            "--out",
            out,
            "--params",
            params,
        )

    # The pool is every compare.methods file: here two methods, one pair shared.
    r = signals({"icon2": ours, "sampling_ranking": theirs}, tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())
    # π = π_ref: every implicit reward is 0, no pair is won; a blind judge shows as 0.
    assert s["held_out_pairs"] == 2 and s["reward_accuracy"] == 0.0 and s["reward_margin"] == 0
    assert s["reward_accuracy_low"] == s["reward_accuracy_high"] == 0.0
    assert s["judge_discrimination"] == 0.0
    # Split by the method whose file each pooled pair came from (the shared one: icon2's).
    assert {m: v["pairs"] for m, v in s["by_source"].items()} == {"icon2": 1, "sampling_ranking": 1}
    # One method only: its own validation pair, so the pool shrinks to 1.
    r = signals({"icon2": ours}, tmp_path / "s1.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s1.json").read_text())["held_out_pairs"] == 1
    # No validation pair anywhere: one clear error, nothing written.
    none = _pairs(tmp_path / "c.parquet", [("train", "Sort a list.", "a", "b")])
    out = tmp_path / "s2.json"
    r = signals({"icon2": none}, out)
    assert r.exit_code == 2 and "common held-out set is empty" in r.output, r.output
    assert not out.exists()
    # A method's file outside the stage's declared deps: named, nothing written.
    (tmp_path / "elsewhere").mkdir()
    r = signals({"icon2": ours, "self_refine": theirs}, out, root=tmp_path / "elsewhere")
    assert r.exit_code == 2 and "compare.methods.icon2" in r.output, r.output
    assert r.output.count("error:") == 1 and not out.exists()


def test_compare_builds_one_table(comp: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    methods = {"icon2": "a.parquet", "direct_prompting": "b.parquet"}
    for i, m in enumerate(methods):
        d = tmp_path / "cmp" / m
        d.mkdir(parents=True)
        (d / "train.json").write_text(json.dumps({"train_pairs": 10 + i, "validation_pairs": 2}))
        signals = {"held_out_pairs": 7, "judge_discrimination": 0}
        for suffix, x in (("", 0.6), ("_low", 0.4), ("_high", 0.8)):
            signals[f"reward_accuracy{suffix}"] = x + i / 10
        (d / "signals.json").write_text(json.dumps(signals))
        evaluation = {"win_rate": 0.5, "lc_win_rate": 0.55, "criteria_moved": 1}
        if i == 0:  # the other row is like metrics written before the interval: shown bare
            evaluation.update(win_rate=0.625, win_rate_low=0.45, win_rate_high=0.8)
        evaluation["direction_shift"] = 0.25
        for c in ("honesty", "harmlessness", "helpfulness", "general"):
            evaluation.update({f"direction_shift_{c}": 0.25, f"direction_shift_{c}_low": 0.1})
            evaluation[f"direction_shift_{c}_high"] = 0.4
        (d / "evaluate.json").write_text(json.dumps(evaluation))
        human = {"n": 150, "ci_level": 0.95}
        for name, x in (("reward_accuracy", 0.59), ("likelihood_accuracy", 0.51)):
            human.update({name: x, f"{name}_ci_low": x - 0.08, f"{name}_ci_high": x + 0.08})
        (d / "benchmark.json").write_text(json.dumps(human))
    cost = tmp_path / "cost.csv"
    pl.DataFrame({"method": ["icon2"], "total_hours": [0.01], "total_money": [0.02]}).write_csv(
        cost
    )
    params = _params(comp, tmp_path)
    data = yaml.safe_load(params.read_text())
    data["compare"]["methods"] = methods  # replace the shipped methods, do not merge
    params.write_text(yaml.safe_dump(data, sort_keys=False))  # the table keeps their order
    args = ["--root", tmp_path / "cmp", "--cost", cost, "--table", tmp_path / "t.csv"]
    r = run_stage("compare", *args, "--markdown", tmp_path / "t.md", "--params", params)
    assert r.exit_code == 0, r.output
    table = pl.read_csv(tmp_path / "t.csv")
    assert table["method"].to_list() == ["icon2", "direct_prompting"]
    assert table["pairs"].to_list() == [12, 13]
    assert table["device_hours"][1] is None  # no cost records: shown as missing, not 0
    assert "| icon2 | 12 |" in (tmp_path / "t.md").read_text() and "| icon2 | 12 |" in r.output
    # Every row is scored on the same held-out pairs; each signal carries its CI.
    assert table["held_out_pairs"].to_list() == [7, 7]
    assert table["reward_accuracy_low"].to_list() == pytest.approx([0.4, 0.5])
    assert table["direction_shift_honesty_high"].to_list() == [0.4, 0.4]
    md = (tmp_path / "t.md").read_text()
    assert "0.600 [0.400, 0.800]" in md and "reward_accuracy_low" not in md
    # The human-preference benchmark's columns, with their intervals.
    assert table["human_pairs"].to_list() == [150, 150]
    assert table["human_reward_accuracy_high"].to_list() == pytest.approx([0.67, 0.67])
    assert "0.590 [0.510, 0.670]" in md
    # The judge's win rate with its interval where the metrics have one.
    assert table["win_rate_low"].to_list() == [0.45, None]
    assert "| 0.625 [0.450, 0.800] |" in md and "| 0.500 |" in md
    # A method whose stages have not run: one clear error naming the file.
    (tmp_path / "cmp" / "icon2" / "signals.json").unlink()
    r = run_stage("compare", *args, "--markdown", tmp_path / "t.md", "--params", params)
    assert r.exit_code == 2 and "signals.json" in r.output, r.output
