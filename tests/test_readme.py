"""The README's Quick start is what CI runs: keep the two in step."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [
        line.strip() for line in section.splitlines() if line.strip().startswith("python3 -m venv")
    ]


def test_quick_start_commands_and_ci_runs_the_test_ones() -> None:
    run, tests, engine_tests = _quick_start_commands()  # exactly three
    assert run.endswith("dvc repro")
    assert tests.endswith("python -m pytest")
    assert "'.[dev,vllm]'" in engine_tests and engine_tests.endswith(
        "python -m pytest tests/engines tests/train/test_trainer.py"
    )
    # .ci/run runs each `&&` step on its own line (so that `set -e` stops at a failed
    # install), in the README's order.
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    for command in (tests, engine_tests):
        steps = command.split(" && ")
        assert steps[0] in ci, f".ci/run does not create {steps[0]!r}"
        start = ci.index(steps[0])
        assert ci[start : start + len(steps)] == steps, f".ci/run differs from README: {command}"
